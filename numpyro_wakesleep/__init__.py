"""Wake-sleep objectives for NumPyro (see issue 3)."""
