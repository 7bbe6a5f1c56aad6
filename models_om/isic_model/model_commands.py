"""`isic-model train | evaluate | export | split-graph | build-om`: the model's life from virtual lab to .om.

Heavy imports (torch, onnx, scikit-learn) stay inside the handlers so `--help` is instant.
"""

import argparse
import json
from pathlib import Path

from isic_model import SHIPPED_MANIFEST
from isic_station.manifest import load_manifest
from isic_station.tools.bench.accuracy import seed_list

DEFAULT_CONFIG = Path(__file__).resolve().parent / "train.toml"


def register(sub: "argparse._SubParsersAction") -> None:
    """Add the model sub-commands to the `isic-model` parser."""
    train = sub.add_parser(
        "train",
        help="train ISiC-Net on the virtual lab, export it and evaluate it on held-out seeds",
        description="Generate virtual-lab measurements (preprocessed exactly as the station does), train "
        "ISiC-Net, export the ONNX graphs and manifest into --out, then evaluate on the config's held-out "
        "seed and record the figures in the manifest. --ablation also trains the ablation variants.",
    )
    train.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="training config TOML (default: %(default)s)"
    )
    train.add_argument(
        "--seed", type=int, default=None, help="training data and initialisation seed (overrides config)"
    )
    train.add_argument(
        "--out", type=Path, default=None, help="output folder (default: the config's out, else ./out/model)"
    )
    train.add_argument("--ablation", action="store_true", help="also train the ablation variants into OUT/ablation/")
    train.add_argument(
        "--ablation-only", action="store_true",
        help="train only the ablation variants into OUT/ablation/, beside the full model already in OUT "
        "(it must come from the same config and seed; its manifest and figures are left as they are)",
    )
    train.add_argument("--no-evaluate", action="store_true", help="skip the held-out evaluation after training")
    train.add_argument(
        "--jobs", type=int, default=1,
        help="train the variants in this many processes at once, one torch thread each (default: %(default)s; "
        "2 on the 2-core trainer when --ablation)",
    )
    train.set_defaults(handler=_train)

    evaluate = sub.add_parser(
        "evaluate",
        help="measure a shipped model through the station's runtime against PLS/SVM on the same samples",
        description="Draw --samples measurements from the virtual lab with --seed, run them through the "
        "station's preprocessing and ONNX Runtime Predictor (bimodal and signal-only), the ablation "
        "models beside the manifest, and the PLS / PLS-DA / SVM baselines fitted on the training seed.",
    )
    evaluate.add_argument("--model", type=Path, default=SHIPPED_MANIFEST, help="manifest.json or its folder")
    seeds = evaluate.add_mutually_exclusive_group(required=True)
    seeds.add_argument("--seed", type=int, help="lab seed of the evaluation samples (= a line seed of the demo bench)")
    seeds.add_argument("--seeds", type=seed_list, metavar="A,B,C",
                       help="several seeds: figures pooled over all their samples, with 95 %% confidence intervals")
    evaluate.add_argument("--samples", type=int, required=True, help="number of measurements")
    evaluate.add_argument("--preset", default="default", help="lab nuisance preset (default: %(default)s)")
    evaluate.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="K=V",
        help="pin a nuisance parameter (repeatable), e.g. --set humidity=0.9",
    )
    evaluate.add_argument("--config", type=Path, default=None,
                          help="measure with this station config's camera and spectrometer settings "
                               "(default: the demo bench's, as `isic-station bench accuracy` runs it)")
    evaluate.add_argument("--training-settings", action="store_true",
                          help="measure with the settings training used instead (the manifest's training.station)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    evaluate.add_argument("--no-baselines", action="store_true", help="skip PLS/SVM (faster)")
    evaluate.add_argument("--no-ablation", action="store_true", help="skip the ablation models")
    evaluate.add_argument(
        "--no-temperature", action="store_true",
        help="give the models no room temperature, as at a station whose sensor reads nothing (a model "
        "trained with the room as an input then falls back to what it learnt without it); JSON room_sensor",
    )
    evaluate.add_argument(
        "--unknown-fibres", default="", metavar="F1,F2",
        help="also measure fabrics holding one of these lab fibres the model does not know (e.g. "
        "wool,silk,acrylic,elastane): adds `unknown_fibre` {flagged_unknown, flagged_known} to the JSON",
    )
    evaluate.set_defaults(handler=_evaluate)

    export = sub.add_parser(
        "export",
        help="export a training checkpoint to ONNX (opset 11, static) and write its manifest",
        description="Write isicnet.onnx, isicnet_signal.onnx and manifest.json from a checkpoint written "
        "by `train`; refuses graphs with ops off atc_allowlist.txt or that ONNX Runtime does not reproduce.",
    )
    export.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt written by train")
    export.add_argument("--out", type=Path, required=True, help="output folder")
    export.set_defaults(handler=_export)

    split = sub.add_parser(
        "split-graph",
        help="add the tile-encoder and fusion graphs, cut from the bimodal graph, to an exported model",
        description="Cut the model's bimodal graph after its image encoder into isicnet_tile_encoder.onnx (one "
        "tile at a time, so the station encodes tiles as the frames arrive) and isicnet_fusion.onnx (the rest), "
        "check that encoder-then-fusion reproduces the bimodal graph on ONNX Runtime and that both are ATC-ready, "
        "and add them to the manifest. `export` and `train` do this themselves; this is for a model exported "
        "before. Compiled .om files must be built again (`build-om`) for the new graphs.",
    )
    split.add_argument("--model", type=Path, default=SHIPPED_MANIFEST, help="manifest.json or its folder "
                       "(default: the shipped model)")
    split.set_defaults(handler=_split_graph)

    build = sub.add_parser(
        "build-om",
        help="compile the manifest's ONNX graphs to Ascend .om files with ATC",
        description="Run CANN's `atc` on every graph of the manifest for each --soc-version (Ascend310: Atlas "
        "200 DK; Ascend310B1/Ascend310B4: Atlas 200I DK A2). On the board (aarch64) ATC is limited to one core.",
    )
    build.add_argument("--manifest", type=Path, default=None,
                       help="manifest.json (default: the checkout's shipped manifest when run inside the repository, "
                            "else the installed one; --record refuses the installed one)")
    build.add_argument("--soc-version", action="append", default=None, help="repeatable; default Ascend310")
    build.add_argument(
        "--precision-mode", default="allow_fp32_to_fp16", help="ATC --precision_mode (default: %(default)s)"
    )
    build.add_argument(
        "--out-dir", type=Path, default=None, help="where the .om files go (default: beside the manifest)"
    )
    build.add_argument(
        "--on-board",
        choices=("auto", "yes", "no"),
        default="auto",
        help="set TE_PARALLEL_COMPILER=1 MAX_COMPILE_CORE_NUMBER=1 (auto: on aarch64)",
    )
    build.add_argument("--record", action="store_true",
                       help="write the names of the .om files ATC wrote into the manifest (one SoC)")
    build.add_argument("--dry-run", action="store_true", help="print the ATC commands without running them")
    build.set_defaults(handler=_build_om)


def _train(args: argparse.Namespace) -> int:
    from isic_model.train import train_command

    return train_command(args.config, args.seed, args.out, args.ablation or args.ablation_only,
                         not args.no_evaluate, args.jobs, train_full=not args.ablation_only)


def _evaluate(args: argparse.Namespace) -> int:
    from isic_model.evaluate import evaluate_command

    return evaluate_command(args)


def _export(args: argparse.Namespace) -> int:
    from isic_model.train import export_checkpoint

    print(export_checkpoint(args.checkpoint, args.out))
    return 0


def _split_graph(args: argparse.Namespace) -> int:
    from isic_model.split_graph import add_split_graphs

    manifest = args.model / "manifest.json" if args.model.is_dir() else args.model
    added = add_split_graphs(load_manifest(manifest))
    print(f"{manifest}: " + (", ".join(f"{key} ({doc['onnx']})" for key, doc in added.items()) if added
                             else "no image encoder in the bimodal graph: nothing to cut"))
    return 0


def _build_om(args: argparse.Namespace) -> int:
    from isic_model.atc import build_om, checkout_manifest, running_on_board, written_om

    manifest = load_manifest(args.manifest or checkout_manifest(Path.cwd()) or SHIPPED_MANIFEST)
    on_board = running_on_board() if args.on_board == "auto" else args.on_board == "yes"
    out_dir = args.out_dir or manifest.path.parent
    commands = build_om(
        manifest,
        args.soc_version or ["Ascend310"],
        out_dir,
        args.precision_mode,
        on_board,
        dry_run=args.dry_run,
        record=args.record,
    )
    for cmd in commands:
        output = Path(cmd[3][len("--output=") :])
        print(json.dumps(cmd) if args.dry_run else f"built {written_om(output.parent, output.name)}")
    return 0
