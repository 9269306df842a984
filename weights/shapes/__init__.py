"""The builtin Shapes world: scene generator, nets, builtin checkpoints and the recipes that train them."""
