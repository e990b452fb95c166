"""The template sandbox: Jinja2's immutable sandbox, closed against the known escapes and bounded in time and size.

Templates are operator data. Two layers keep a hostile or careless one harmless:

- **An audit at compile time**, so ``broadcaster check`` refuses the template and names its line: attribute
  names starting with ``_`` or reaching Python internals (``__class__``, ``mro``, ``gi_frame``...),
  ``.format`` / ``.format_map`` (format fields read attributes: Jinja's CVE-2016-10745, CVE-2019-10906,
  CVE-2024-56326), the ``attr`` filter (CVE-2025-27516: it fetched ``format`` past the sandbox), attribute paths
  starting with ``_`` in filter arguments (``map(attribute="__class__")``), and calls of methods that modify data.
  The same template refused at compile time fails at render time too, and the engine falls back to the
  built-in template.
- **Limits at render time**, all cheap enough for every render (a normal post costs a few microseconds more):
  operators that can explode (``*``, ``**``, ``+``, ``%``) are checked before they run, as are ``range``, the
  filters that pad, repeat or join, and string methods that pad or replace; every string a template builds and
  its output are capped; every loop iteration and every call costs a step, and a render stops after
  `RenderLimits.max_steps` steps or `RenderLimits.max_seconds`, whichever comes first. A stopped render raises
  `TemplateLimitExceeded` (a `jinja2.exceptions.SecurityError`), which the engine turns into a `TemplateProblem`.

The limits are checked in the rendering thread itself: loops and calls are the only ways a Jinja template can
repeat work, and each one passes through `limits.tick`; C-level operations that could run long or allocate much
(big powers, repetition, padding) are refused before they start, because no timer can interrupt them.

- `environment`: `BoundedSandbox`, the environment, and the template class that runs each render under a budget;
- `audit`: the compile-time audit (`UnsafeTemplateError`);
- `rewrite`: the compile-time rewrite that makes loops and '~' pay;
- `limits`: `RenderLimits`, the per-render budget and the size checks (`TemplateLimitExceeded`);
- `methods`: which methods of built-in types a template may call;
- `filters`: the built-in filters wrapped with their checks.
"""

from broadcaster.render.sandbox.audit import UnsafeTemplateError
from broadcaster.render.sandbox.environment import BoundedSandbox
from broadcaster.render.sandbox.limits import RenderLimits, TemplateLimitExceeded

__all__ = [
    "BoundedSandbox",
    "RenderLimits",
    "TemplateLimitExceeded",
    "UnsafeTemplateError",
]
