package handlers

import "time"

// SetAuditSyncBudget changes how long a search of all AuditEvents converts before answering, and returns the
// previous value (tests of the incomplete answer).
func SetAuditSyncBudget(d time.Duration) time.Duration {
	old := auditSyncBudget
	auditSyncBudget = d
	return old
}
