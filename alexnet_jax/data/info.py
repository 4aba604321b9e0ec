"""What the training loop needs to know about a dataset before reading it."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  num_train_examples: int  # the whole split, all processes together
  num_eval_examples: int  # the whole split, all processes together
  class_names: tuple[str, ...] | None = None  # label index -> readable name, where known
