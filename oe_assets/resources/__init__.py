"""Resources: dataset loaders and other shared inputs."""
