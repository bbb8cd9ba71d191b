"""The experiments of the paper as plans of train.py runs, with the paper's published values (report.py
turns the finished runs into tables and figures).

A run is named by its row label, a '+'-joined list of tokens that says exactly what it does, so one label
always means one configuration and plans that need the same run share it:

    continuous | scratch         start from the old model (--init old) or from a random init
    init                         shrink-perturb (Eq. 4): --init shrink_perturb, or --sp for scratch
    reg | l2                     L2-init (Eq. 5) | plain L2
    data | oldnew                easy/hard sampling (Sec. 3.3) | old/new balanced sampling (Fig. 4)
    repl                         weighted sampling with replacement (--replacement; default: without)
    x0.25                        schedule scale (Sec. 3.4);   multistep: the multistep schedule (App. A.6)
    gradnorms                    the --grad-norms probe (App. A.7): observes only, trains as without it
    alpha=, beta=, lambda=, c=, r=   a non-default hyper-parameter (App. A.3-A.5)

Plans: table1 (Table 1), table2a (Table 2a), table2b (Table 2b), fig6 (Fig. 6), fig7 (Fig. 7, a new domain),
appendix (App. A.3-A.6), analysis (App. A.5, A.7, A.8: Figs. 11, 14, 15), and laptop (Table 2a's CIFAR-10 rows at a
size two CPU cores train in about an hour per seed set: SCALES).
table2a, table2b and appendix are lists of Sections (a sub-table and a figure each), from which both the
runs and the report follow.
"""
import os
from dataclasses import dataclass, field

import data


@dataclass
class Run:
    name: str  # path below the runs folder: <split>/seed<k>/[task<t>/]<label>
    label: str
    split: str
    task: int
    seed: int
    flags: list  # train.py flags beyond the common ones
    deps: list = field(default_factory=list)  # names of runs whose ckpt.pt (or log) this one reads
    also_for: list = field(default_factory=list)  # other splits whose tables use this run (Table 2b's scratch rows)


HYPER = {"alpha": "--sp-alpha", "beta": "--sp-beta", "lambda": "--reg-lambda", "c": "--eh-c", "r": "--eh-r"}


TOKEN_FLAGS = {"init": [], "reg": ["--reg", "l2init"], "l2": ["--reg", "l2"], "data": ["--sampler", "easy_hard"],
               "oldnew": ["--sampler", "old_new"], "multistep": ["--schedule", "multistep"],
               "gradnorms": ["--grad-norms"], "repl": ["--replacement"]}  # gradnorms: App. A.7's probe, observes only


def flags_for(label, task, old_ckpt):
    """train.py flags of a row label (see the module docstring); returns (flags, reads the old checkpoint)."""
    column, *toks = label.split("+")
    if column not in ("continuous", "scratch"):
        raise ValueError(f"label '{label}' must start with continuous or scratch")
    init = "init" in toks
    flags = ["--task", str(task), "--init"] + (["shrink_perturb" if init else "old"] if column == "continuous"
                                               else ["scratch"] + ["--sp"] * init)
    for t in toks:
        if t in TOKEN_FLAGS:
            flags += TOKEN_FLAGS[t]
        elif t.startswith("x"):
            flags += ["--schedule-scale", t[1:]]
        elif "=" in t and t.split("=")[0] in HYPER:
            flags += [HYPER[t.split("=")[0]], t.split("=")[1]]
        else:
            raise ValueError(f"label '{label}': unknown token '{t}'")
    reads_old = column == "continuous" or "data" in toks  # easy/hard: the old model's learning speed
    return flags + ["--old-ckpt", old_ckpt] * reads_old, reads_old


def old_run(split, seed):
    """The old model (task 0). It records the exact learning speed (Eq. 6) that easy/hard sampling reads."""
    return Run(f"{split}/seed{seed}/old", "old", split, 0, seed, ["--task", "0"])


def cell(split, seed, label, old, runs_dir, task=1, prefix="", is_old_of_next=False):
    """The run of `label` at `task`, continuing from (or sampling by) the run `old`. A run that no later run
    samples by records no learning speed (its exact form costs an evaluation pass per epoch)."""
    flags, reads_old = flags_for(label, task, os.path.join(runs_dir, old.name, "ckpt.pt"))
    flags += [] if is_old_of_next else ["--learning-speed", "off"]
    return Run(f"{split}/seed{seed}/{prefix}{label}", label, split, task, seed, flags,
               [old.name] if reads_old else [])


def two_task_plan(splits, seeds, labels, runs_dir, share=False):
    """An old model per split and seed, then the given rows at task 1. share: rows that do not read the old
    model (scratch rows without easy/hard) are trained once per seed, under the first split, when every split
    covers the same classes: their data, labels and seed are then the same in every split."""
    covers = lambda sp: tuple(data.parse_domains(sp) or [sum(data.parse_split(sp, 10 ** 6))])  # noqa: E731
    same_classes = len({covers(sp) for sp in splits}) == 1  # the same classes, or the same domains
    runs, shared = [], {}
    for split in splits:
        for s in seeds:
            old = old_run(split, s)
            runs.append(old)
            for lab in labels:
                run = cell(split, s, lab, old, runs_dir)
                if share and same_classes and not run.deps:
                    if (s, lab) in shared:
                        shared[s, lab].also_for.append(split)
                        continue
                    shared[s, lab] = run
                runs.append(run)
    return runs


# ------------------------------------------------------------------------------------ paper values
# Table 1: (Initialization, Regularization, Data, Scheduler) and (Continuous Max Acc, L99, L100,
# Scratch Max Acc, L99, L100); None is the paper's '/'.
TABLE1 = [
    ((0, 0, 0, 1.0), (65.26, None, None, 65.92, 1.33, 1.00)),
    ((1, 0, 0, 1.0), (66.43, 1.49, 1.20, 65.06, None, None)),
    ((0, 1, 0, 1.0), (68.60, 1.94, 1.66, 67.90, 1.69, 1.51)),
    ((0, 0, 1, 1.0), (66.65, 1.60, 1.31, 66.61, 1.54, 1.31)),
    ((0, 0, 0, 0.25), (64.15, None, None, 63.72, None, None)),
    ((1, 1, 0, 1.0), (68.91, 2.19, 1.82, 68.01, 1.75, 1.54)),
    ((1, 0, 1, 1.0), (66.76, 2.92, 2.53, 66.61, 1.54, 1.31)),
    ((0, 1, 1, 1.0), (68.86, 1.96, 1.69, 68.30, 1.67, 1.49)),
    ((1, 1, 1, 1.0), (69.47, 2.19, 1.84, 68.31, 1.69, 1.52)),
    ((1, 1, 1, 0.25), (68.26, 5.73, 5.32, 63.74, None, None)),
]

OURS = "continuous+init+reg+data"
# Table 2a: rows (name, label) and, per dataset, the paper's (Max Acc, L99, L100) of each row.
TABLE2A_ROWS = [("Scratch", "scratch"), ("Continuous", "continuous"), ("Ours (x1)", OURS),
                ("Ours (x0.5)", OURS + "+x0.5")]
TABLE2A = {
    "cifar10": ("CIFAR-10 (8+2)", [(83.32, 1.55, 1.0), (81.37, None, None), (83.95, 1.83, 1.29), (84.33, 3.61, 2.92)]),
    "adaptiope": ("Adaptiope-PI (100+23)", [(74.59, 1.14, 1.0), (74.93, 1.17, 1.02), (77.51, 1.55, 1.42),
                                            (76.75, 2.36, 2.24)]),
    "imagenet100": ("ImageNet-100 (80+20)", [(62.34, 1.18, 1.0), (62.21, 1.23, None), (67.41, 2.16, 1.97),
                                             (66.26, 3.39, 3.09)]),
    "imagenet200": ("ImageNet-200 (180+20)", [(55.16, 1.18, 1.0), (53.5, None, None), (59.62, 1.69, 1.64),
                                              (58.54, 2.84, 2.75)]),
}
# Table 2b: the reference is Scratch + L2-init; the paper gives the two scratch rows once (on all classes).
TABLE2B_ROWS = [("Scratch + L2-init", "scratch+reg"), ("Scratch (x0.5)", "scratch+reg+x0.5"),
                ("Ours (x1.0)", OURS), ("Ours (x0.5)", OURS + "+x0.5"), ("Ours (x0.25)", OURS + "+x0.25")]
TABLE2B_SCRATCH = [(67.90, 1.29, 1.00), (67.14, None, None)]
TABLE2B = {
    "90+10": [(69.42, 1.56, 1.41), (69.07, 2.95, 2.65), (68.42, 5.05, 4.47)],
    "70+30": [(69.47, 1.61, 1.45), (68.77, 2.84, 2.56), (68.26, 4.74, 4.34)],
    "50+50": [(69.09, 1.50, 1.35), (68.42, 2.70, 2.37), (67.57, 4.34, None)],
    "30+70": [(68.81, 1.49, 1.31), (68.10, 2.56, 2.30), (66.93, None, None)],
}

# The resolution we train each dataset at (the paper gives none; docs/choices.md):
# folder images are resized whole to this square, and above 32 the model has the ImageNet stem (resnet.stem_for).
IMAGE_SIZE = {"cifar10": 32, "cifar100": 32, "adaptiope": 112, "imagenet100": 112, "imagenet200": 112}
PLAN_DATA = {"fig7": "adaptiope"}  # the dataset of a plan that has one fixed dataset in the paper


def image_size(args):
    """--image-size's default for a folder dataset: the resolution of the paper's dataset that the run compares
    to, else 32. CIFAR is 32x32 whatever it is compared to."""
    if args.dataset != "folder":
        return 32
    return IMAGE_SIZE.get(args.compare_to or PLAN_DATA.get(args.plan), 32)


def row_label(column, init, reg, data, scale):
    parts = [column] + ["init"] * init + ["reg"] * reg + ["data"] * data + ([f"x{scale:g}"] if scale != 1 else [])
    return "+".join(parts)


TOKEN_NAMES = {"init": "shrink & perturb", "reg": "L2-init", "data": "easy / hard", "l2": "L2", "oldnew": "old / new",
               "multistep": "multistep", "gradnorms": "gradient-norm probe", "repl": "with replacement"}


def paper_name(label):
    """The paper's name of a row label: 'Scratch', 'Naive', 'Ours (x0.5)', 'Naive + L2-init (x0.25)', ..."""
    if label == "old":
        return "Old model"
    column, *toks = label.split("+")
    scale = [t for t in toks if t.startswith("x")]
    rest = [t for t in toks if not t.startswith("x")]
    if column == "continuous" and rest == ["init", "reg", "data"]:
        return f"Ours ({scale[0] if scale else 'x1'})"
    name = ("Scratch" if column == "scratch" else "Naive") + "".join(f" + {TOKEN_NAMES.get(t, t)}" for t in rest)
    return name + (f" ({scale[0]})" if scale else "")


# ------------------------------------------------------------------------------------------- plans

@dataclass
class Section:
    """One sub-table and one figure: rows [(name, label, paper (Max Acc, L99, L100) or None)] at task 1 of
    `split`, with speed-ups against the `reference` label."""
    key: str
    title: str
    split: str
    reference: str
    rows: list


def sections_plan(sections_of):
    """The plan of a table made of Sections: an old model per split and seed, then every label the sections
    need (their references first); rows that do not depend on the split are shared. sections_of(args) ->
    (name, [Section])."""
    def plan(args, runs_dir):
        secs = sections_of(args)[1]
        labels = dict.fromkeys(lab for sec in secs for lab in [sec.reference] + [r[1] for r in sec.rows])
        return two_task_plan(list(dict.fromkeys(sec.split for sec in secs)), range(args.seeds), labels, runs_dir,
                             share=True)
    return plan


# Fig. 1 draws Ours (x0.5), whose 2.7x its caption quotes; Fig. 5 compares the x0.25, x0.5 and x0.75 schedules
FIGURE_ROWS = [OURS + "+x0.5", "continuous+x0.5", "continuous+x0.75"]


def rows_plan(labels):
    """The plan of fixed rows: an old model per seed on --split, then the rows `labels` at task 1."""
    return lambda args, runs_dir: two_task_plan([args.split], range(args.seeds), labels, runs_dir)


TABLE1_LABELS = [row_label(col, *key) for key, _ in TABLE1 for col in ("continuous", "scratch")] + FIGURE_ROWS


def sections_table2a(args):
    """Table 2a: one section; the paper's values of the dataset named by --compare-to (or --dataset)."""
    name = args.compare_to or args.dataset
    title, paper = TABLE2A.get(name) or (f"{args.dataset} ({args.split})", [None] * len(TABLE2A_ROWS))
    rows = [(row, lab, p) for (row, lab), p in zip(TABLE2A_ROWS, paper)]
    return f"table2a_{name}", [Section(name, f"Table 2a: {title}", args.split, "scratch", rows)]


def sections_laptop(args):
    """Table 2a's CIFAR-10 (8+2) rows at the laptop scale (SCALES): the paper's method settings, a smaller
    network, images and training set; the paper's full-size values beside ours."""
    rows = [(row, lab, p) for (row, lab), p in zip(TABLE2A_ROWS, TABLE2A["cifar10"][1])]
    return "laptop", [Section("laptop", f"Table 2a, laptop scale: {args.split}, {args.per_class or 'all'} images "
                                        f"per class, {args.image_size} px, width {args.width}", args.split, "scratch",
                              rows)]


PLATEAU = "scratch (2x iterations)"  # the laptop plan's plateau check: seed 0's scratch model, twice the budget


def plan_laptop(args, runs_dir):
    """sections_laptop's runs, and the plateau check: seed 0's scratch model trained for twice the iterations,
    its schedule stretched to them (report.report_laptop compares the two Max Acc)."""
    flags = ["--task", "1", "--init", "scratch", "--iters", str(2 * args.iters), "--learning-speed", "off"]
    plateau = Run(f"{args.split}/seed0/scratch-2x-iters", PLATEAU, args.split, 1, 0, flags)
    return [plateau] + sections_plan(sections_laptop)(args, runs_dir)  # the longest run first


def sections_table2b(args):
    """Table 2b: a section per split, each against its own Scratch + L2-init."""
    sections = []
    for split in args.split.split(","):
        paper = TABLE2B_SCRATCH + TABLE2B[split] if split in TABLE2B else [None] * len(TABLE2B_ROWS)
        sections.append(Section(split, f"Table 2b: {split} (reference: Scratch + L2-init)", split, "scratch+reg",
                                [(name, lab, p) for (name, lab), p in zip(TABLE2B_ROWS, paper)]))
    return "table2b", sections


def variant(label, name, value, default):
    """The label with a hyper-parameter token; the default value keeps the plain label (shared runs)."""
    return label if value == default else f"{label}+{name}={value:g}"


# App. A.3-A.6 on 70+30 (the paper does not list its grids); the default value's run is Table 1's plain row.
APPENDIX = {
    "alpha": ("Fig. 8: shrink alpha", [(f"alpha={a:g}", variant("continuous+init", "alpha", a, 0.4))
                                       for a in (0.1, 0.2, 0.4, 0.6, 0.8, 0.9)]),
    "beta": ("Fig. 9: perturb beta", [(f"beta={b:g}", variant("continuous+init", "beta", b, 0.001))
                                      for b in (0, 0.0001, 0.001, 0.01, 0.1)]),
    "lambda": ("Fig. 10: L2-init lambda", [(f"lambda={x:g}", variant("continuous+reg", "lambda", x, 0.01))
                                           for x in (0.0001, 0.001, 0.01, 0.1)]),
    "easy_hard": ("Fig. 12: easy/hard c and r", [
        (f"{col} c={c:g} r={r:g}", variant(variant(f"{col}+data", "c", c, 0.2), "r", r, 0.1))
        for col in ("continuous", "scratch") for c, r in ((0.2, 0.1), (0.1, 0.1), (0.4, 0.1), (0.2, 0), (0.2, 0.5))]),
    "multistep": ("Fig. 13: multistep against cosine", [
        ("scratch cosine", "scratch"), ("continuous cosine", "continuous"),
        ("scratch multistep", "scratch+multistep"), ("continuous multistep", "continuous+multistep")]),
    "old_new": ("Fig. 4: old/new and easy/hard sampling", [
        ("scratch", "scratch"), ("naive", "continuous"), ("old / new", "continuous+oldnew"),
        ("easy / hard", "continuous+data")]),
    "l2": ("Fig. 3: L2 against L2-init", [
        ("scratch", "scratch"), ("scratch + L2", "scratch+l2"), ("scratch + L2-init", "scratch+reg"),
        ("naive", "continuous"), ("continuous + L2", "continuous+l2"), ("continuous + L2-init", "continuous+reg")]),
    # Sec. 3.3 says "reduce the sampling probability ... to one-tenth": our default draws without replacement
    # (pseudo-epochs, every example at most once each); the usual weighted sampler draws with replacement (about
    # 63% distinct examples per epoch). Table 1's Data row and Ours both ways, to show whether the choice matters.
    "replacement": ("Sec. 3.3: weighted sampling without (ours) and with replacement", [
        ("scratch", "scratch"), ("easy / hard", "continuous+data"),
        ("easy / hard, with replacement", "continuous+data+repl"), ("Ours", OURS),
        ("Ours, with replacement", OURS + "+repl")]),
}


def sections_appendix(args):
    return "appendix", [Section(sweep, title, args.split, "scratch", [(name, lab, None) for name, lab in rows])
                        for sweep, (title, rows) in APPENDIX.items()]


# Fig. 7 (Sec. 4.3): old data = Adaptiope's product images, new data = its real-life photos of the same classes
FIG7_ROWS = [("Scratch", "scratch"), ("Naive", "continuous"), ("Ours", OURS)]


def plan_fig7(args, runs_dir):
    """Fig. 7: an old model on the first domain, then Scratch, Naive and Ours on both domains."""
    domains = data.parse_domains(args.split)
    if not domains or len(domains) != 2:
        raise ValueError(f"fig7 needs a split of two domains, old+new (e.g. product_images+real_life), "
                         f"got '{args.split}'")
    return rows_plan([lab for _, lab in FIG7_ROWS])(args, runs_dir)


# Fig. 6's chain runs every task's schedule to the end by default: Sec. 4.2 reads the chain's higher final
# accuracy as "benefits from larger total accumulated learning time" ("in total, the continuous models have
# trained for more iterations"), which a chain stopped at its scratch model's maximum cannot show (its Max Acc
# would equal scratch's by construction, and every later task would start from a model stopped mid-cosine).
CHAIN_STOP_DEFAULT = "schedule"


def plan_fig6(args, runs_dir):
    """A chain (Sec. 4.2, Fig. 6): task t continues from task t-1's continuous model with all four methods;
    beside it a scratch model per task on all data seen so far. chain_stop 'schedule' (the default,
    CHAIN_STOP_DEFAULT): each task runs its (chain_scale) schedule to the end; 'l100': each task ends at the
    first evaluation reaching its seed's scratch model's maximum (the yellow dots of Fig. 6), so the next task
    continues from there and the chain is charged exactly what it ran."""
    n_tasks = len(data.parse_split(args.split, 10 ** 6))
    chain_label = OURS + (f"+x{args.chain_scale:g}" if args.chain_scale != 1 else "")
    runs = []
    for s in range(args.seeds):
        prev = old_run(args.split, s)
        runs.append(prev)
        for t in range(1, n_tasks):
            scratch = cell(args.split, s, "scratch", prev, runs_dir, task=t, prefix=f"task{t}/")
            cont = cell(args.split, s, chain_label, prev, runs_dir, task=t, prefix=f"task{t}/{args.chain_stop}-",
                        is_old_of_next=True)  # the stop mode in the path: the two chains never share a run
            if args.chain_stop == "l100":
                cont.flags += ["--stop-at-acc-of", os.path.join(runs_dir, scratch.name)]
                cont.deps.append(scratch.name)
            runs += [scratch, cont]
            prev = cont
    return runs


# ------------------------------------------------------------------ App. A.5, A.7, A.8: Figs. 11, 14, 15
# The old model (Fig. 11 reads its per-epoch correctness bits), the scratch run and a naive run with the
# gradient-norm probe (Fig. 14; Fig. 15 draws its losses and the scratch run's). The old and scratch runs have
# Table 1's names and labels, so either plan reuses what the other trained; the naive run has a label of its
# own because Table 1's "continuous" does not probe (the probe changes none of its training).
ANALYSIS_LABELS = ["scratch", "continuous+gradnorms"]


SECTIONS = {"table2a": sections_table2a, "laptop": sections_laptop, "table2b": sections_table2b,
            "appendix": sections_appendix}
PLANS = {"table1": rows_plan(TABLE1_LABELS), "table2a": sections_plan(sections_table2a),
         "table2b": sections_plan(sections_table2b), "fig6": plan_fig6, "fig7": plan_fig7,
         "appendix": sections_plan(sections_appendix), "analysis": rows_plan(ANALYSIS_LABELS),
         "laptop": plan_laptop}
# the setting each plan has in the paper (--dataset / --split default to these)
PLAN_DEFAULTS = {"table1": ("cifar100", "70+30"), "table2a": ("cifar10", "8+2"),
                 "table2b": ("cifar100", "90+10,70+30,50+50,30+70"), "fig6": ("cifar100", "50+5x10"),
                 "fig7": ("folder", "product_images+real_life"), "appendix": ("cifar100", "70+30"),
                 "analysis": ("cifar100", "70+30"), "laptop": ("cifar10", "8+2")}

# The size of each plan's runs, unless a flag says otherwise: the paper's (App. A.2), and the laptop plan's, chosen
# by measurement on 2 CPU cores (docs/laptop.md): 100 training images per class (a fixed seeded subset) at 16x16
# px and width 16, trained 3,910 iterations (500 epochs of the 1,000 images). At 500 and 250 per class the same
# budget was below the plateau: twice the iterations gained more than a point. eval_every is at `iters`; other
# lengths scale it (at least 1). quick_iters: --quick's length.
PAPER_SCALE = dict(seeds=5, iters=39100, eval_every=200, width=64, image_size=None, per_class=0, quick_iters=4000)
SCALES = {"laptop": dict(seeds=3, iters=3910, eval_every=78, width=16, image_size=16, per_class=100,
                         quick_iters=400)}
RESULTS = {"laptop": os.path.join("results", "laptop")}  # where a plan's own setting writes (else results/)
