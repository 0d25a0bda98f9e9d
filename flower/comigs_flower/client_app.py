"""The ClientApp that Flower requires in every Flower App (`flwr run` refuses an app without).

The nodes of this federation are comigs TypeScript nodes (fed/flower/): they answer the
ServerApp's messages themselves and never run a ClientApp. A Python SuperNode that joins by
mistake gets this error reply instead of silently training nothing.
"""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

app = ClientApp()

_REFUSAL = (
    "comigs-flower has no Python ClientApp: its nodes are comigs TypeScript nodes "
    "(fed/flower/ in the comigs repository), not Python SuperNodes."
)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Refuse: a Python SuperNode cannot train CoMiGS experts."""
    raise RuntimeError(_REFUSAL)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Refuse: a Python SuperNode cannot evaluate CoMiGS experts."""
    raise RuntimeError(_REFUSAL)
