"""Pieces that the data engine (ivdata) and the trainer (ivtrain) both use; it imports neither."""
