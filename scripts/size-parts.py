"""Sums twiggy's per-item sizes (CSV from `twiggy top --format csv`) by crate, and the gateway's own
code by module, and prints the largest parts (`scripts/size.sh`)."""

import collections
import csv
import re
import sys

SHOWN = 24


def part(name: str) -> str:
    """The crate an item belongs to (the gateway's own code: its module), from its demangled name."""
    if name.startswith("data segment"):
        return "(data: string constants, tables)"
    # `<&mut serde_json::de::Deserializer<R> as ...>::f` belongs to serde_json, `<T as U>::f` to T.
    bare = re.sub(r"^[<&]+(mut |dyn )?", "", name)
    crate = re.match(r"[A-Za-z_][A-Za-z_0-9]*", bare)
    if not crate:
        return "(other)"
    crate = crate.group(0)
    if crate == "sluice":
        module = re.match(r"sluice::([a-z_0-9]+)(::([a-z_0-9]+))?", bare)
        if module:
            top = module.group(1)
            if top in ("routes", "store") and module.group(3):
                return f"sluice::{top}::{module.group(3)}"
            return f"sluice::{top}"
    return crate


def main(path: str) -> None:
    sizes: collections.Counter = collections.Counter()
    for row in csv.DictReader(open(path, encoding="utf-8")):
        name = row["Name"]
        if name.startswith("custom section") or "subsection" in name or name.startswith("Σ"):
            continue
        sizes[part(name)] += int(row["ShallowSize"])
    total = sum(sizes.values())
    print()
    print("WASM by part (code and data, names kept, before wasm-opt; twiggy)")
    print(f"{'part':<44}{'bytes':>10}{'share':>9}")
    print("-" * 63)
    for name, size in sizes.most_common(SHOWN):
        print(f"{name[:43]:<44}{size:>10,}{size / total:>8.1%}")
    rest = total - sum(size for _, size in sizes.most_common(SHOWN))
    print(f"{'(the rest)':<44}{rest:>10,}{rest / total:>8.1%}")
    print(f"{'total':<44}{total:>10,}")


if __name__ == "__main__":
    main(sys.argv[1])
