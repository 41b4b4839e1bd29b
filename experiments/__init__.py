"""Measured comparisons behind the tables of docs/sequence.md (RNN/GRU/LSTM) and docs/results.md (temporal
encoders); run as scripts."""
