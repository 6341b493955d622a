"""Entry point for `accelerate launch`; the same code as `reward-trainer train`.

python scripts/train_reward.py --config recipes/quickstart.yaml
accelerate launch --config_file accelerate_configs/cpu.yaml scripts/train_reward.py --config recipes/quickstart.yaml
"""

import sys

from reward_trainer.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
