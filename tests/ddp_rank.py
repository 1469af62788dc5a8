"""One rank of a `torchrun` job for test_train's DDP test: train, then save this rank's final weights
and step count beside the policy (`rank<N>.safetensors`, `rank<N>.json`)."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safetensors.torch import save_file  # noqa: E402

from agent.train import TrainConfig, train  # noqa: E402

drives, out, minutes = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
cfg = TrainConfig(arch="small", batch=16, lr=2e-3, epoch_frames=64)
result = train(drives, out / "policy", minutes=minutes, cfg=cfg, device="cpu", verbose=False)
rank = os.environ["RANK"]
save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, str(out / f"rank{rank}.safetensors"))
(out / f"rank{rank}.json").write_text(json.dumps({"steps": result.steps, "minutes": result.minutes}))
