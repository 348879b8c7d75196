"""The label convention of every batch memlab builds: ``labels`` int64 [B, T] aligned with
``input_ids`` (labels[:, t] is the token after input_ids[:, :t + 1]); positions that carry
no target hold IGNORE_INDEX (cross-entropy's default ignore_index)."""

IGNORE_INDEX = -100
