"""Write the openAPIV3Schema of CustomResourceDefinitions as small JSON files.

    python tests/schemas/crds/vendor_crds.py CRD.yaml [CRD.yaml ...]

For each version a CRD serves, writes `<group>_<kind>_<version>.json` beside this file:
the `openAPIV3Schema` alone, with every `description` dropped (two thirds of the bytes,
no meaning to a validator) and the top-level `status` dropped (never rendered by a
chart; the controller writes it). Nothing else is changed: types, enums, required
fields, patterns, bounds and the `x-kubernetes-*` markers stay as the CRD has them.
tests/schemas/crds/README.md names the source and version of the files here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


def strip(node: Any) -> Any:
    """The schema without descriptions (a property *named* description is kept)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                out[key] = {name: strip(sub) for name, sub in value.items()}
            elif key != "description":
                out[key] = strip(value)
        return out
    if isinstance(node, list):
        return [strip(item) for item in node]
    return node


def vendor(crd_file: Path) -> list[Path]:
    crd = yaml.safe_load(crd_file.read_text())
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    written = []
    for version in crd["spec"]["versions"]:
        schema = strip(version["schema"]["openAPIV3Schema"])
        schema.get("properties", {}).pop("status", None)
        out = HERE / f"{group}_{kind.lower()}_{version['name']}.json"
        out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        written.append(out)
    return written


if __name__ == "__main__":
    for name in sys.argv[1:]:
        for path in vendor(Path(name)):
            print(f"{path.name}: {path.stat().st_size} bytes")
