"""Access: the principal, the policy (policies/*.yaml), the gate (decides, masks, records) and the audit log."""
