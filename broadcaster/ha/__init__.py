"""High availability: which instance of several sharing one PostgreSQL database is the leader (docs/ha.md).

`role` holds the interface the rest of the code asks (`Leadership`) and the single-instance answer
(`SoleInstance`, SQLite: always the leader, held by the state directory's lock).
"""

from broadcaster.ha.role import Fence, Leadership, Role, SoleInstance

__all__ = ["Fence", "Leadership", "Role", "SoleInstance"]
