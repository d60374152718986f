"""HTTP connectors (aiohttp): an enrichment step, a sink and a webhook source.

* :class:`HttpEnricher`: an async step function that calls a service per
  record; use it with ``.map(..., retry=..., breaker=..., bulkhead=...)``.
* :class:`HttpSink`: POSTs records with position-derived ``Idempotency-Key`` headers.
* :class:`WebhookSource`: an HTTP server whose POSTs feed a pipeline and are
  answered 200 only once their records are checkpointed; senders sign requests
  with :func:`sign_webhook`.

Statuses 408, 429 and 5xx, connection errors and timeouts raise
:class:`HttpTransientError` (retried; ``Retry-After`` honoured); any other
non-2xx status raises :class:`HttpDataError` (reason ``http_<status>``).
"""

from __future__ import annotations

from riprap.lowlevel import fixup_module_metadata

from ._enricher import Decode as Decode
from ._enricher import HttpEnricher as HttpEnricher
from ._errors import HttpDataError as HttpDataError
from ._errors import HttpTransientError as HttpTransientError
from ._errors import check_status as check_status
from ._errors import is_transient_status as is_transient_status
from ._signature import SIGNATURE_HEADER as SIGNATURE_HEADER
from ._signature import TIMESTAMP_HEADER as TIMESTAMP_HEADER
from ._signature import sign_webhook as sign_webhook
from ._sink import HttpSink as HttpSink
from ._webhook import WebhookSource as WebhookSource
from ._webhook import WebhookStatistics as WebhookStatistics

__all__ = (
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Decode",
    "HttpDataError",
    "HttpEnricher",
    "HttpSink",
    "HttpTransientError",
    "WebhookSource",
    "WebhookStatistics",
    "check_status",
    "is_transient_status",
    "sign_webhook",
)

fixup_module_metadata(__name__, globals())
