package auth

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/carta-fhir/carta/fhir"
)

// Principal is the verified caller of a request.
type Principal struct {
	Subject  string
	Patient  string // set for tokens carrying patient/ scopes
	FHIRUser string
	ClientID string
	JTI      string
	Expires  time.Time
	Scope    string
	Scopes   []Scope
	// patientLimited is true when the token's resource access is confined to Patient's compartment.
	patientLimited bool

	grants sync.Map // grantKey -> fhir.Grant
	access *fhir.Access
}

func newPrincipal(c *Claims) *Principal {
	scopes, _ := ParseScopes(c.Scope)
	p := &Principal{Subject: c.Subject, Patient: c.Patient, FHIRUser: c.FHIRUser, ClientID: c.ClientID, JTI: c.ID, Scope: c.Scope, Scopes: scopes}
	if c.ExpiresAt != nil {
		p.Expires = c.ExpiresAt.Time
	}
	for _, s := range scopes {
		if s.Context == "patient" {
			// A token with any patient/ scope is confined to its patient, whatever else it carries.
			p.patientLimited = true
		}
	}
	p.access = &fhir.Access{
		Read:   func(typ string) fhir.Grant { return p.Grant(typ, PermRead) },
		Search: func(typ string) fhir.Grant { return p.Grant(typ, PermSearch) },
	}
	if p.patientLimited {
		p.access.Patient = p.Patient
	}
	return p
}

// PatientLimited reports whether the caller is confined to one patient's compartment.
func (p *Principal) PatientLimited() bool { return p.patientLimited }

// Grant returns what the token's scopes allow for one resource type and permission letter. A patient-limited
// token without a patient claim is allowed nothing.
func (p *Principal) Grant(typ string, perm byte) fhir.Grant {
	if p.patientLimited && p.Patient == "" {
		return fhir.Grant{}
	}
	key := grantKey{typ, perm}
	if g, ok := p.grants.Load(key); ok {
		return g.(fhir.Grant)
	}
	g := grant(p.Scopes, typ, perm)
	p.grants.Store(key, g)
	return g
}

type grantKey struct {
	typ  string
	perm byte
}

// Access returns the limits the store applies to everything this caller reads.
func (p *Principal) Access() *fhir.Access { return p.access }

var permNames = map[byte]string{PermCreate: "create", PermRead: "read", PermUpdate: "update", PermDelete: "delete", PermSearch: "search"}

// Require returns the grant for typ and perm, or a 403 *fhir.Error naming the scope that would be needed.
func (p *Principal) Require(typ string, perm byte) (fhir.Grant, error) {
	g := p.Grant(typ, perm)
	if g.Allowed {
		return g, nil
	}
	ctx := "user"
	if p.patientLimited {
		ctx = "patient"
	}
	if p.patientLimited && p.Patient == "" {
		return g, fhir.Errorf(http.StatusForbidden, fhir.IssueForbidden, "the token has patient/ scopes but no patient in context")
	}
	return g, fhir.Errorf(http.StatusForbidden, fhir.IssueForbidden, "the token's scopes do not allow %s of %s (it would need %s/%s.%c; it has: %s)",
		permNames[perm], typ, ctx, typ, perm, strings.Join(scopeStrings(p.Scopes), " "))
}

func scopeStrings(ss []Scope) []string {
	if len(ss) == 0 {
		return []string{"no resource scopes"}
	}
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.raw
	}
	return out
}

// String describes the caller for logs.
func (p *Principal) String() string {
	return fmt.Sprintf("%s (client %s)", p.Subject, p.ClientID)
}

type principalKey struct{}

// WithPrincipal returns a context carrying the verified caller, for code below the HTTP layer that applies
// rules by who asks (the store's write hooks).
func WithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the caller a context carries, or nil.
func PrincipalFrom(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}
