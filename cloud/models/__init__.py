"""Model definitions: pure ``nn.Module``s with typed configs and no I/O."""
