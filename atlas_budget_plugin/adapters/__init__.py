"""Drop-in adapters for hosts that are not ATLAS: budgets for any SDK client on httpx, and for LiteLLM.

* :class:`BudgetTransport` (``atlas_budget_plugin.adapters.transport``): an httpx transport
  for the ``openai``, ``anthropic`` and ``google-genai`` clients (``http_client=``), sync
  and async, JSON and SSE. Needs ``httpx`` or ``httpx2``, which those SDKs bring.
* ``atlas_budget_plugin.adapters.litellm``: ``budgeted_completion`` /
  ``budgeted_acompletion`` and a Router callback (``pip install 'atlas-budget-plugin[litellm]'``);
  not imported here, so this package imports without LiteLLM.

Both go through the host contract in :mod:`hookspecs` (``pre_llm_call`` before the
request, exactly one ``post_llm_call`` after it), as ATLAS does: no adapter touches the store.
"""

from .transport import BudgetTransport, blocked_by

__all__ = ["BudgetTransport", "blocked_by"]
