package auth

import (
	"testing"
)

func TestParseScopes(t *testing.T) {
	tests := []struct {
		in        string
		wantPerms map[string]string // raw scope -> perms; absent means dropped
		other     []string
	}{
		{"patient/Observation.read", map[string]string{"patient/Observation.read": "rs"}, nil},
		{"patient/*.write", map[string]string{"patient/*.write": "cud"}, nil},
		{"user/Patient.*", map[string]string{"user/Patient.*": "cruds"}, nil},
		{"system/Task.cu", map[string]string{"system/Task.cu": "cu"}, nil},
		{"patient/Observation.rs?category=laboratory", map[string]string{"patient/Observation.rs?category=laboratory": "rs"}, nil},
		{"patient/Observation.sr", map[string]string{}, nil},  // out of cruds order: dropped
		{"patient/Observation.dus", map[string]string{}, nil}, // out of order
		{"patient/Nope.rs", map[string]string{}, nil},         // unknown type
		{"admin/Patient.rs", map[string]string{}, nil},        // unknown context
		{"patient/*.rs?category=x", map[string]string{}, nil}, // restriction on a wildcard
		{"patient/Observation.", map[string]string{}, nil},    // no permissions
		{"openid fhirUser launch/patient offline_access", map[string]string{}, []string{"openid", "fhirUser", "launch/patient", "offline_access"}},
	}
	for _, tt := range tests {
		res, other := ParseScopes(tt.in)
		got := map[string]string{}
		for _, s := range res {
			got[s.String()] = s.Perms
		}
		if len(got) != len(tt.wantPerms) {
			t.Errorf("%q: got %v, want %v", tt.in, got, tt.wantPerms)
		}
		for k, v := range tt.wantPerms {
			if got[k] != v {
				t.Errorf("%q: %s has %q, want %q", tt.in, k, got[k], v)
			}
		}
		if len(other) != len(tt.other) {
			t.Errorf("%q: other scopes %v, want %v", tt.in, other, tt.other)
		}
	}
}

func TestGrant(t *testing.T) {
	scopes, _ := ParseScopes("patient/Observation.rs?category=laboratory patient/Observation.r?category=vital-signs patient/Patient.r patient/*.s")
	if g := grant(scopes, "Patient", 'r'); !g.Allowed || len(g.Filters) != 0 {
		t.Errorf("Patient read: %+v", g)
	}
	if g := grant(scopes, "Observation", 'r'); !g.Allowed || len(g.Filters) != 2 {
		t.Errorf("Observation read should be allowed through two restricted scopes: %+v", g)
	}
	if g := grant(scopes, "Observation", 's'); !g.Allowed || len(g.Filters) != 0 {
		t.Errorf("Observation search: the unrestricted patient/*.s wins: %+v", g)
	}
	if g := grant(scopes, "Observation", 'c'); g.Allowed {
		t.Errorf("Observation create must not be allowed: %+v", g)
	}
	bad, _ := ParseScopes("patient/Observation.rs?nosuchparam=1")
	if g := grant(bad, "Observation", 'r'); g.Allowed {
		t.Errorf("a restriction the server cannot apply must grant nothing: %+v", g)
	}
}
