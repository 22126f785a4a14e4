"""One tiny-model flow run in a process of its own, for the crash and concurrency tests.

    python tests/flow_runner.py '{"flow": "finetune", "store": ..., "samples": ..., "out": ...}'

The caller sets the environment: PREFECT_API_URL (the test session's server), LORETUNE_HOME, and
LORETUNE_FAILPOINTS to kill the run at a failpoint (loretune/failpoints.py). On success the run's
stage ledger and flow run id are written to `out` as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from recipes import QUICK_OPEN, TINY

# The fastest finetune that still runs every stage: the tiny model, two checkpoints, a small grid.
FAST = {**TINY, **QUICK_OPEN, "training.max_steps": 4, "training.save_steps": 2, "evaluation.batch_size": 32,
        "evaluation.max_items": 60,
        "export.checkpoint": "last"}  # the tiny model is rarely promoted: export the last checkpoint anyway


def main() -> None:
    args = json.loads(sys.argv[1])
    overrides = {"store": args["store"], **FAST, **args.get("overrides", {})}
    if args.get("flow", "finetune") == "refresh":
        from loretune.flows.refresh import refresh as run
    else:
        from loretune.flows.finetune import finetune as run
    state = run(config="deployments/naruto.yaml", overrides=overrides, sample_sources=args["samples"],
                return_state=True)
    result = state.result()
    Path(args["out"]).write_text(json.dumps({"stages": result["stages"],
                                             "flow_run_id": str(state.state_details.flow_run_id)}))


if __name__ == "__main__":
    main()
