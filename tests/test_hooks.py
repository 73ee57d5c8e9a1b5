import pytest
import torch

from oe_assets.lens import HookNeverFired, HookRegistry


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(3, 3) for _ in range(4)])
        self.unused = torch.nn.Linear(3, 3)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_patterns_indices_and_removal():
    net = Net()
    seen = []
    with HookRegistry(net) as hooks:
        names = hooks.add_pre("layers.*", lambda name, index, *rest: seen.append(("pre", index[0])), indices=[1, 3])
        hooks.add_post("layers.*", lambda name, index, m, a, k, out: seen.append(("post", index[0], out.shape)))
        assert names == ["layers.1", "layers.3"]
        net(torch.zeros(2, 3))
        hooks.check_all_fired()
    assert [s for s in seen if s[0] == "pre"] == [("pre", 1), ("pre", 3)]
    assert [s[1] for s in seen if s[0] == "post"] == [0, 1, 2, 3]
    seen.clear()
    net(torch.zeros(2, 3))
    assert seen == []  # removed on exit


def test_never_fired_hooks_are_named():
    net = Net()
    with HookRegistry(net) as hooks:
        hooks.add_pre("unused", lambda *a: None)
        hooks.add_pre("layers.*", lambda *a: None, indices=[0])
        net(torch.zeros(1, 3))
        with pytest.raises(HookNeverFired, match="unused") as err:
            hooks.check_all_fired()
        assert "layers.0" not in str(err.value)


def test_unknown_patterns_and_indices():
    net = Net()
    with HookRegistry(net) as hooks:
        with pytest.raises(KeyError, match="matches no module"):
            hooks.add_pre("blocks.*", lambda *a: None)
        with pytest.raises(KeyError, match=r"no module at indices \[7\]"):
            hooks.add_pre("layers.*", lambda *a: None, indices=[0, 7])
