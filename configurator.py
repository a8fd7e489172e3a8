"""
The settings of the flat scripts (train.py, sample.py, bench.py): plain globals, overridden from
config files and the command line, and train.py's checked for their ranges. Nothing here is machine
learning, and nothing ends the process: a mistake raises ConfigError, which the script prints as
one line (runtime.die).

Settings. The scripts' settings are plain globals; apply() overrides them from the command line:

    python train.py config/NAME.py --mask_ratio 0.15 --compile=false

Arguments apply left to right. A path ending in .py is a config file: Python that assigns some of
the settings. `--key value` and `--key=value` set one setting, converted to the type of its
default: an int is accepted where a float is expected, booleans take true/false/1/0/yes/no, and a
bare `--flag` sets a boolean to true. An unknown key or a value of the wrong type raises
ConfigError with one line naming the fix; `--help` prints every setting with its comment.
"""

import ast
import difflib
import re
import sys


class ConfigError(ValueError):
    pass


def _closest(key, keys):
    match = difflib.get_close_matches(key, keys, n=1)
    return f" (did you mean --{match[0]}?)" if match else " (see --help)"


def convert(key, value, default):
    """value (a string from the command line, or any object from a config file) as the type of
    default; ConfigError if it does not fit."""
    want = type(default)
    bad = ConfigError(f"--{key} expects {want.__name__} (like {default!r}), got {value!r}")
    if isinstance(value, str) and want is not str:
        text = value.strip().lower()
        if want is bool:
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise bad
        try:
            value = int(text) if want is int and text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            raise bad from None
    if want is bool and not isinstance(value, bool):
        raise bad
    if want is int and isinstance(value, float) and value.is_integer():
        value = int(value)  # 1e3 or 2.0 for an int setting
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # an int where a float is expected: --mask_ratio=0
    if not isinstance(value, want):
        raise bad
    return value


def parse(argv, defaults):
    """The settings that argv changes, as a dict {key: value}; defaults gives the valid keys and
    their types."""
    out, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--"):
            if not arg.endswith(".py"):
                raise ConfigError(f"unexpected argument {arg!r}: use --key value, or a config file ending in .py")
            try:
                with open(arg) as f:
                    source = f.read()
            except OSError:
                raise ConfigError(f"config file not found: {arg}") from None
            namespace = {}
            try:
                exec(compile(source, arg, "exec"), {}, namespace)
            except SyntaxError as e:
                raise ConfigError(f"{arg}, line {e.lineno}: {e.msg}") from None
            except Exception as e:  # the config file's own code failed
                raise ConfigError(f"{arg} raised {type(e).__name__}: {e}") from None
            for key, value in namespace.items():
                if key.startswith("_") or type(value).__name__ == "module":
                    continue
                if key not in defaults:
                    raise ConfigError(f"{arg} sets unknown setting {key!r}{_closest(key, list(defaults))}")
                out[key] = convert(key, value, defaults[key])
            continue
        key, has_value, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in defaults:
            raise ConfigError(f"unknown option --{key}{_closest(key, list(defaults))}")
        if not has_value:
            if i < len(argv) and not argv[i].startswith("--"):
                value = argv[i]
                i += 1
            elif isinstance(defaults[key], bool):
                value = "true"  # a bare --flag
            else:
                raise ConfigError(f"--{key} needs a value, like --{key} {defaults[key]!r}")
        out[key] = convert(key, value, defaults[key])
    return out


def help_text(script_path, defaults):
    """Every setting with its default and the comment beside it in the script."""
    comments = {}
    with open(script_path) as f:
        for line in f:
            m = re.match(r"^(\w+) = .*?#\s*(.*)$", line)
            if m:
                comments.setdefault(m.group(1), m.group(2))  # the settings block, not a later reassignment
    lines = [f"usage: python {script_path} [config/NAME.py] [--key value | --key=value ...]", ""]
    lines += [f"  --{k} {v!r:<16} {comments.get(k, '')}" for k, v in defaults.items()]
    return "\n".join(lines)


def check_ranges(s):
    """train.py's numeric settings (s, a dict of them) in their ranges; ConfigError naming the flag.
    (The model's shape is GPTConfig's to check, MEAP's mask.py's, the data's batches.py's.)"""
    for k in ("batch_size", "block_size", "max_iters", "gradient_accumulation_steps", "eval_interval",
              "log_interval", "eval_iters", "eval_examples"):
        if not 1 <= s[k] < 2**31:
            raise ConfigError(f"--{k} must be at least 1 (and below 2**31), got {s[k]}")
    if s["eval_examples"] > 10**6:  # generated and scored at every evaluation
        raise ConfigError(f"--eval_examples must be at most 1,000,000, got {s['eval_examples']}")
    if not 0 <= s["seed"] < 2**31:  # (2**31 and up seed the held-out data: random_streams.VAL_SEED)
        raise ConfigError(f"--seed must be in [0, 2**31), got {s['seed']}")
    for k in ("learning_rate", "min_lr", "weight_decay", "grad_clip"):  # (NaN fails every comparison)
        if not 0 <= s[k] <= 1e9:  # beyond, AdamW's float32 arithmetic overflows
            raise ConfigError(f"--{k} must be a number in [0, 1e9], got {s[k]}")
    if s["learning_rate"] == 0 or not (0 <= s["beta1"] < 1 and 0 <= s["beta2"] < 1) or s["seed"] < 0 or \
            not 0 <= s["warmup_iters"] < 2**31 or not -1 <= s["lr_decay_iters"] < 2**31:
        raise ConfigError(f"need --learning_rate > 0, --beta1 and --beta2 in [0, 1), --seed >= 0 and --warmup_iters "
                          f">= 0 (got {s['learning_rate']}, {s['beta1']}, {s['beta2']}, {s['seed']}, "
                          f"{s['warmup_iters']})")


def defaults_of(script_globals):
    """A script's settings: its globals of type int, float, bool or str not starting with '_'."""
    return {k: v for k, v in script_globals.items()
            if not k.startswith("_") and isinstance(v, (int, float, bool, str))}


def apply(argv, script_globals):
    """Update a script's settings (see defaults_of) from argv, and return the dict of those that argv
    changed; ConfigError (one line) on bad input, and on --help the help printed and exit 0."""
    defaults = defaults_of(script_globals)
    if "-h" in argv or "--help" in argv:
        print(help_text(script_globals["__file__"], defaults))
        sys.exit(0)
    changed = parse(argv, defaults)
    script_globals.update(changed)
    return changed


def read_settings(script_path):
    """A script's default settings, read from its source without running it: the literal
    assignments at the top level before its configurator.apply line."""
    with open(script_path) as f:
        tree = ast.parse(f.read())
    settings = {}
    for node in tree.body:
        if "configurator.apply" in ast.unparse(node):
            break
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                settings[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass  # not a literal: not a setting
    return settings
