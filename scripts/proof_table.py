"""Print the README's table of VLM families: which are proven against their own processor and which
against their documentation. ``python scripts/proof_table.py``"""

from collections import defaultdict

from vistok.budget.core import all_families
from vistok.budget.models import list_models, resolve_model


def main() -> None:
    by_family = defaultdict(list)
    for name in list_models():
        by_family[resolve_model(name).family].append(name)
    print("| family | models | proven against | rule follows |")
    print("|---|---|---|---|")
    for name, family in sorted(all_families().items(), key=lambda kv: (kv[1].proof, kv[0])):
        models = ", ".join(by_family[name])
        proof = "its HF processor (hypothesis, 200+ sizes)" if family.proof == "processor" else "its documentation"
        print(f"| `{name}` | {models} | {proof} | {family.source} |")


if __name__ == "__main__":
    main()
