"""Similar-wafer search: the fab server's in-memory nearest-neighbour index of embeddings."""
