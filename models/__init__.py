"""Torch networks (detector, tracker head, student encoder, DSWR head), DCSD losses and training."""
