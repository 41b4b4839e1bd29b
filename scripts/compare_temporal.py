"""Compare mean pooling with the temporal encoders on the synthetic set (extra arguments go to training)."""
from captioner.compare_temporal import main

if __name__ == "__main__":
    raise SystemExit(main())
