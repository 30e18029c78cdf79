"""kdledger as a Flower App, for `flwr run .` and Flower's Deployment Engine (docs/deployment.md).

The ClientApp is node.client_app's; this ServerApp reads the scenario named in the run config,
sets up the chain and identities as `kdledger run` does, coordinates through the Grid it is given,
and writes the same run directory. It runs in its own process, so the chain must be a JSON-RPC
node (chain.rpc_url, e.g. `kdledger devnet`), not the embedded one.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

log = logging.getLogger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from chain.errors import RunFailed
    from simulations.runner import finish_run, prepare_run
    from simulations.scenario import load_scenario

    scenario = load_scenario(Path(str(context.run_config["scenario"])))
    if not scenario.chain.rpc_url:
        raise RunFailed(
            f"{scenario.name}: under `flwr run` the ServerApp has its own process; "
            "set chain.rpc_url (e.g. to `kdledger devnet`'s URL)"
        )
    out = str(context.run_config.get("out", ""))
    run = prepare_run(
        scenario,
        Path(out) if out else None,
        progress=lambda phase, done, total: log.info("%s %d/%d", phase, done, total),
    )
    try:
        run.coordinator.run(grid)
    except Exception as exc:  # noqa: BLE001 - finish_run reports it in one line
        run.coordinator.error = exc
    result = finish_run(run)
    log.info(
        "kdledger run %s: student 0x%s, run directory %s",
        scenario.name,
        (result.ledger.student_hash or b"").hex(),
        result.out_dir,
    )
