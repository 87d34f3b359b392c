"""mgid: memory-guided image de-raining trained on time-lapse data (Cho, Kim, Sohn, TIP 2022)."""
import torch  # noqa: F401  (the compiled extension links against torch: import it first)

__version__ = "0.1.0"
