"""The sequence module: RNN, GRU and LSTM on the basic tasks that motivate the captioner's design."""
