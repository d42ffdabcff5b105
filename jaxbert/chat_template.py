"""A model's own chat template rendered the way transformers' `apply_chat_template` does.

Chat templates are Jinja programs shipped with the model (tokenizer_config.json's
`chat_template`, or a GGUF's `tokenizer.chat_template`). They are rendered in a sandboxed
environment with `trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, the
globals templates rely on (`raise_exception`, `strftime_now`, `namespace`), a `tojson`
filter that does not HTML-escape, and the variables `messages`, `add_generation_prompt`,
`tools`, `documents` and the tokenizer's special tokens (`bos_token`, `eos_token`, ...).
The rendered text is then tokenized without adding special tokens: the template has
placed them.
"""

from __future__ import annotations

import datetime
import functools
import json

from jaxbert.errors import UserError


def _environment():
  try:
    import jinja2  # pylint: disable=g-import-not-at-top
    import jinja2.ext  # pylint: disable=g-import-not-at-top
    from jinja2 import sandbox  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("--chat needs the jinja2 package: pip install jinja2") from None

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  def strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)

  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
  return env, jinja2


@functools.lru_cache(maxsize=8)
def _compile(template: str):
  env, jinja2 = _environment()
  try:
    return env.from_string(template), jinja2
  except jinja2.exceptions.TemplateSyntaxError as e:
    raise UserError(f"the checkpoint's chat template does not parse ({e}); generate without "
                    "--chat") from None


def render(template: str, messages: list[dict], *, add_generation_prompt: bool = True,
           special_tokens: dict[str, str] | None = None, **variables) -> str:
  """The conversation `messages` ([{"role": ..., "content": ...}, ...]) as the model's text."""
  compiled, jinja2 = _compile(template)
  try:
    return compiled.render(messages=messages, tools=None, documents=None,
                           add_generation_prompt=add_generation_prompt,
                           **{**(special_tokens or {}), **variables})
  except jinja2.exceptions.TemplateError as e:
    raise UserError(f"the checkpoint's chat template refused the conversation: {e}") from None


def conversation(user: str, system: str | None = None) -> list[dict]:
  """One user turn, after a system turn when `system` is given."""
  messages = [{"role": "system", "content": system}] if system is not None else []
  return messages + [{"role": "user", "content": user}]
