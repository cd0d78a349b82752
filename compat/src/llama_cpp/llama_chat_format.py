"""Chat formats (llama-cpp-python's `llama_chat_format`): what pyinfer's chat modules offer,
under the same names: the formats registered by name (`chat_format="chatml"`, ...,
`"chatml-function-calling"`), `register_chat_format`, `get_chat_completion_handler`,
`Jinja2ChatFormatter`, `ChatFormatterResponse`, the `format_*` formatters.

pyinfer.chat holds the handler machinery and pyinfer.chat_formats the named formats; both
are re-exported whole, so a name either gains is here too. llama-cpp-python names its vicuna
formatter `format` (shadowing the built-in in this module, as there); pyinfer calls it
`format_vicuna`.
"""
from pyinfer.chat import *  # noqa: F401,F403
from pyinfer.chat_formats import *  # noqa: F401,F403
from pyinfer.chat_formats import format_vicuna as format  # noqa: F401,A001
