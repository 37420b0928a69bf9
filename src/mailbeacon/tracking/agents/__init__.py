"""Who a User-Agent says is asking: tables of mail programs, browsers and machines.

``identify_agent`` reads the agent alone; the decision rules that weigh it
against networks and timing live in ``mailbeacon.tracking.classify``.
"""

from mailbeacon.tracking.agents.identify import identify_agent
from mailbeacon.tracking.agents.model import PERSON_KINDS, AgentClass, AgentKind, Certainty

__all__ = ["PERSON_KINDS", "AgentClass", "AgentKind", "Certainty", "identify_agent"]
