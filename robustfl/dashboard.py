"""``robustfl-dashboard --project P [--entity E]``: a saved W&B workspace for comparing
defenses, built with wandb-workspaces.

:func:`build_workspace` is a pure function (no network) that returns the workspace spec; only
:func:`main` saves it, which needs a W&B API key.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from robustfl.tracking import has_api_key


def build_workspace(entity: str, project: str, name: str = "robustfl: defenses vs attacks") -> Any:
    """The workspace: runs grouped by attack then defense; a bar chart of final accuracy per
    defense (one bar group per attack, mean and std over seeds); accuracy curves; ASR and
    robustness error; final accuracy against privacy spent and bits sent (runs with
    ``privacy`` or ``compression``)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    by_defense = wr.Config("defense")

    def bars(title: str, summary_key: str) -> Any:
        return wr.BarPlot(
            title=title,
            metrics=[wr.SummaryMetric(summary_key)],
            groupby=by_defense,
            groupby_aggfunc="mean",
            groupby_rangefunc="stddev",
            orientation="v",
        )

    def curve(title: str, metric: str, **options: Any) -> Any:
        return wr.LinePlot(
            title=title,
            x="round",
            y=[metric],
            groupby=by_defense,
            groupby_aggfunc="mean",
            groupby_rangefunc="stddev",
            **options,
        )

    def against(title: str, summary_key: str) -> Any:
        return wr.ScatterPlot(
            title=title,
            x=wr.SummaryMetric(summary_key),
            y=wr.SummaryMetric("final.accuracy"),
            log_x=True,
            range_y=(0, 1),
        )

    def section(title: str, panels: list[Any], is_open: bool = True) -> Any:
        return ws.Section(name=title, panels=panels, is_open=is_open)

    return ws.Workspace(
        entity=entity,
        project=project,
        name=name,
        runset_settings=ws.RunsetSettings(
            groupby=[ws.Config("attack"), ws.Config("defense")],
            order=[ws.Ordering(ws.Summary("final.accuracy"), ascending=False)],
        ),
        sections=[
            section(
                "Final accuracy per defense, under each attack",
                [
                    bars("final accuracy (mean ± std over seeds)", "final.accuracy"),
                    bars("best accuracy", "best.accuracy"),
                ],
            ),
            section(
                "Accuracy per round",
                [curve("test accuracy", "accuracy", range_y=(0, 1)), curve("test loss", "loss")],
            ),
            section(
                "Backdoor: attack success rate",
                [curve("ASR per round", "asr", range_y=(0, 1)), bars("final ASR", "final.asr")],
            ),
            section(
                "Robustness diagnostics",
                [
                    curve(
                        "||agg - mean(honest)|| / ||mean(honest)||", "robustness_error", log_y=True
                    ),
                    curve("Byzantine rows selected", "byzantine_selected"),
                ],
                is_open=False,
            ),
            section(
                "Privacy and compression",
                [
                    against("final accuracy vs epsilon", "privacy_mechanism.epsilon"),
                    curve("epsilon per round", "epsilon", log_y=True),
                    against(
                        "final accuracy vs bits per client per round",
                        "compression_scheme.bits_per_message",
                    ),
                ],
                is_open=False,
            ),
        ],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="robustfl-dashboard", description=__doc__.split("\n")[0])
    parser.add_argument("--project", required=True, help="W&B project the runs logged to")
    parser.add_argument("--entity", default=None, help="W&B entity (default: your default)")
    parser.add_argument("--name", default="robustfl: defenses vs attacks")
    args = parser.parse_args(argv)
    if not has_api_key():
        sys.exit(
            "robustfl-dashboard: saving a workspace needs a W&B API key: run `wandb login` "
            "or set WANDB_API_KEY (runs logged offline can be uploaded first with "
            "`wandb sync`)."
        )
    entity = args.entity
    if entity is None:
        import wandb

        entity = wandb.Api().default_entity
    workspace = build_workspace(entity, args.project, args.name)
    saved = workspace.save()
    print(f"robustfl-dashboard: saved {saved.url}")


if __name__ == "__main__":
    main()
