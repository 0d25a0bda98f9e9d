"""The comigs Flower App: a FedAvg ServerApp over the shared (generalist) tensors."""
