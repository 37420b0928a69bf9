"""Webhooks: the user's events, signed to the Standard Webhooks specification and delivered
to their other tools (a CRM) after the change they report has committed."""
