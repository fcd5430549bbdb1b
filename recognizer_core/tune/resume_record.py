"""What defines a Tune experiment (`recognizer_tune.json` in its folder: the space, the overrides, the options
that score its trials) and the check that a re-run asks for the same search before it resumes it: resuming with
another space or scoring would mix two searches. Needs no Ray, so the tune scripts call it before starting one."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Iterable

from pydantic import BaseModel

from recognizer_core.config import ConfigError
from recognizer_core.storage import join_uri, read_text, to_uri
from recognizer_core.tune.search_space import Param, SearchSpace

if TYPE_CHECKING:
    from recognizer_core.tune.tuner import TuneOptions

REQUEST_FILE = "recognizer_tune.json"
# SearchSpace fields left out of the record: source (where the file is), demo (its overrides are in
# extra_overrides when used), fixed (base + extra)
RECORD_EXCLUDES = ("source", "demo", "fixed")


def request_record(space: SearchSpace, extra: dict[str, Any], config_cls: type[BaseModel],
                   options: TuneOptions) -> dict:
    """What defines an experiment: resuming it with a different space or overrides would mix two searches."""
    return {"config_class": f"{config_cls.__module__}.{config_cls.__qualname__}",
            "space": json.loads(space.model_dump_json(exclude=set(RECORD_EXCLUDES))),
            "extra_overrides": extra,
            "options": json.loads(options.model_dump_json(exclude={"storage_path", "retry_errored"}))}


SCORED_OPTIONS = ("metric", "mode", "folds", "seed", "objectives", "epochs_field")


def _defaults(model: type[BaseModel], skip: Iterable[str] = ()) -> dict[str, Any]:
    """`model`'s fields that have a default, as JSON (how a record holds them)."""
    return {name: json.loads(json.dumps(f.get_default(call_default_factory=True)))
            for name, f in model.model_fields.items() if not f.is_required() and name not in skip}


def _comparable(record: dict) -> dict:
    """`record` with the defaults of the space's and its params' fields filled in where it lacks them: a field
    added to SearchSpace or Param later (`epochs_field`, `counted_after`) is in new records, absent from older
    ones, and the older code behaved as its default; compared as written, no older experiment could resume."""
    extra = record.get("extra_overrides")
    if isinstance(extra, dict) and isinstance(extra.get("data.path"), str):
        # recorded as resolved since 2026-12-05 (an absolute path, an s3:// URI without its trailing '/'); as the
        # prepared path was returned before (relative to the driver's cwd, as typed): one place, two spellings
        record = {**record, "extra_overrides": {**extra, "data.path": to_uri(extra["data.path"])}}
    space = record.get("space")
    if not isinstance(space, dict):
        return record
    param_defaults = _defaults(Param)
    params = {n: {**param_defaults, **p} if isinstance(p, dict) else p for n, p in (space.get("params") or {}).items()}
    space = {**_defaults(SearchSpace, skip=RECORD_EXCLUDES), **space, "params": params}
    return {**record, "space": space}


def _moved_class(previous: str | None, current: str) -> bool:
    """The same config class under another module path: the record was written by another version of the code
    (recognizer_core.train.config.TrainJobConfig became recognizer_core.train.stgcn.config.TrainJobConfig)."""
    return bool(previous) and previous != current and previous.rsplit(".", 1)[-1] == current.rsplit(".", 1)[-1]


def _check_same_request(previous: dict, current: dict, experiment_uri: str) -> None:
    previous, current = _comparable(previous), _comparable(current)
    if _moved_class(previous.get("config_class"), current["config_class"]):
        # Tune's saved state (searcher, trials) names the old code's classes, and the user changed nothing
        # that "re-run with the original space" could undo.
        raise ConfigError(f"{experiment_uri} was started by an older (or other) recognizer version (config "
                          f"class {previous['config_class']}, now {current['config_class']}) and cannot be "
                          "resumed by this one: start a new --name (the old experiment's folder is left as it is).")
    changed = [k for k in ("config_class", "space", "extra_overrides") if previous.get(k) != current.get(k)]
    if changed:
        details = [] if "config_class" not in changed else [f"config class {previous.get('config_class')}"]
        if "space" in changed:
            prev, cur = previous.get("space", {}), current["space"]
            for k in sorted(set(prev) | set(cur)):
                if prev.get(k) != cur.get(k):  # the params by name: which parameter of the space changed
                    p, c = (x.get(k) if isinstance(x.get(k), dict) else {} for x in (prev, cur))
                    names = [n for n in sorted(set(p) | set(c)) if p.get(n) != c.get(n)] if k == "params" else []
                    details += [f"space.{k}.{n}" for n in names] or [f"space.{k}"]
        if "extra_overrides" in changed:
            prev, cur = previous.get("extra_overrides", {}), current["extra_overrides"]
            details += [f"override {k}" for k in sorted(set(prev) | set(cur)) if prev.get(k) != cur.get(k)]
        raise ConfigError(f"{experiment_uri} holds an experiment started with a different search (changed: "
                          f"{', '.join(details or changed)}). Re-run with the original space and options to "
                          "continue it, or pass a new --name to start another experiment.")
    opt_prev, opt_cur = previous.get("options", {}), current["options"]
    # What the trials are scored on and compared by: a resumed search keeps its searcher and scheduler, while
    # the summary, the folds and the best pick would follow the new value and mix two searches.
    space = current.get("space", {})

    def effective(opts: dict, k: str) -> Any:  # metric / mode unset mean the space's (the same space here)
        return opts.get(k) if opts.get(k) is not None or k not in ("metric", "mode") else space.get(k)
    scored = [k for k in SCORED_OPTIONS if k in opt_prev and effective(opt_prev, k) != effective(opt_cur, k)]
    if scored:
        was = ", ".join(f"{k} {effective(opt_prev, k)!r}" for k in scored)
        now = ", ".join(f"{k} {effective(opt_cur, k)!r}" for k in scored)
        raise ConfigError(f"{experiment_uri} was started with {was} (now {now}): its trials were scored that "
                          "way. Re-run with the original values to continue it, or pass a new --name to start "
                          "another experiment.")
    ignored = [k for k in sorted(set(opt_prev) | set(opt_cur))
               if opt_prev.get(k) != opt_cur.get(k) and k not in SCORED_OPTIONS]
    if ignored:
        print(f"[tune] resuming {experiment_uri}: options {ignored} differ from the first run and are ignored "
              "(a resumed experiment keeps its budget, scheduler and searcher state)", flush=True)


def check_resumable(space: SearchSpace, config_cls: type[BaseModel], options: TuneOptions, *,
                    extra_overrides: dict[str, Any] | None = None) -> bool:
    """True if the experiment already exists (and will be resumed); a ConfigError if it was started with a
    different space or overrides. Needs no Ray, so scripts call it before starting one."""
    experiment_uri = join_uri(to_uri(options.storage_path), options.name)
    previous = read_text(join_uri(experiment_uri, REQUEST_FILE))
    if previous is None:
        return False
    record = request_record(space, dict(extra_overrides or {}), config_cls, options)
    _check_same_request(json.loads(previous), record, experiment_uri)
    return True
