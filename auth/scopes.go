// Package auth issues and verifies Carta's access tokens and turns their SMART scopes into what a caller may do.
package auth

import (
	"net/url"
	"strings"

	"github.com/carta-fhir/carta/fhir"
)

// Scope is one SMART resource scope: patient/Observation.rs?category=laboratory.
type Scope struct {
	Context string // patient, user or system
	Type    string // a resource type or "*"
	Perms   string // a subset of "cruds", in that order
	// Query restricts the scope to resources matching it (SMART v2 granular scopes); nil when unrestricted.
	Query url.Values
	raw   string
}

func (s Scope) String() string { return s.raw }

// Has reports whether the scope grants the permission p (one of c r u d s).
func (s Scope) Has(p byte) bool { return strings.IndexByte(s.Perms, p) >= 0 }

// ParseScopes splits a scope string into resource scopes; other scopes (openid, fhirUser, launch,
// offline_access, ...) are returned as they are. A resource scope that is malformed (unknown context or type,
// permissions out of the cruds order) is dropped: a server never widens what it does not understand.
func ParseScopes(s string) (resource []Scope, other []string) {
	for _, raw := range strings.Fields(s) {
		sc, ok := parseScope(raw)
		if ok {
			resource = append(resource, sc)
		} else if !strings.Contains(raw, "/") || strings.HasPrefix(raw, "launch/") {
			other = append(other, raw)
		}
	}
	return resource, other
}

func parseScope(raw string) (Scope, bool) {
	ctx, rest, ok := strings.Cut(raw, "/")
	if !ok || (ctx != "patient" && ctx != "user" && ctx != "system") {
		return Scope{}, false
	}
	rest, qs, hasQuery := strings.Cut(rest, "?")
	dot := strings.LastIndexByte(rest, '.')
	if dot < 0 {
		return Scope{}, false
	}
	typ, perm := rest[:dot], rest[dot+1:]
	if typ != "*" && !fhir.R4().IsResourceType(typ) {
		return Scope{}, false
	}
	sc := Scope{Context: ctx, Type: typ, raw: raw}
	switch perm {
	case "read":
		sc.Perms = "rs"
	case "write":
		sc.Perms = "cud"
	case "*":
		sc.Perms = "cruds"
	default:
		if !inCrudsOrder(perm) {
			return Scope{}, false
		}
		sc.Perms = perm
	}
	if hasQuery {
		if typ == "*" {
			return Scope{}, false
		}
		q, err := url.ParseQuery(qs)
		if err != nil || len(q) == 0 {
			return Scope{}, false
		}
		sc.Query = q
	}
	return sc, true
}

// inCrudsOrder reports whether p is a non-empty subsequence of "cruds".
func inCrudsOrder(p string) bool {
	if p == "" {
		return false
	}
	const order = "cruds"
	i := 0
	for j := 0; j < len(p); j++ {
		k := strings.IndexByte(order[i:], p[j])
		if k < 0 {
			return false
		}
		i += k + 1
	}
	return true
}

// Interaction permission letters.
const (
	PermCreate = 'c'
	PermRead   = 'r'
	PermUpdate = 'u'
	PermDelete = 'd'
	PermSearch = 's'
)

// grant computes what the scopes allow for one type and permission. Filter queries that cannot be parsed as
// searches on typ make their scope grant nothing.
func grant(scopes []Scope, typ string, perm byte) fhir.Grant {
	var g fhir.Grant
	for _, sc := range scopes {
		if (sc.Type != "*" && sc.Type != typ) || !sc.Has(perm) {
			continue
		}
		if sc.Query == nil {
			return fhir.Grant{Allowed: true}
		}
		q, err := fhir.ParseQuery(typ, sc.Query, fhir.QueryOptions{})
		if err != nil || len(q.Clauses) == 0 {
			continue
		}
		g.Allowed = true
		g.Filters = append(g.Filters, q.Clauses)
	}
	return g
}
