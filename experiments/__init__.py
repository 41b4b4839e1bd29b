"""Measured comparisons behind the README's tables (RNN/GRU/LSTM, temporal encoders); run as scripts."""
