"""Run under torchrun by test_training.py: train a few steps and dump this rank's weights."""

import os
import sys

import torch

from ofa.train.run import TrainConfig
from ofa.train.trainer import Trainer

out, schedule = sys.argv[1], sys.argv[2]
cfg = TrainConfig(out=out, space="mbv3-digits", space_overrides={"resolutions": [12, 16]},
                  schedule=schedule, epochs=0.3, batch_size=32, eval_images=0)
t = Trainer(cfg)
t.run()
rank = int(os.environ["RANK"])
torch.save({k: v.clone() for k, v in t.net.state_dict().items()}, f"{out}/rank{rank}.pt")
