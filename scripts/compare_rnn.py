"""Compare RNN, GRU and LSTM on the long-range task (and gradient clipping); write tables and plots."""
from captioner.compare_rnn import main

if __name__ == "__main__":
    main()
