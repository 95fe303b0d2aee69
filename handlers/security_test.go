package handlers_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/carta-fhir/carta/auth"
	"github.com/golang-jwt/jwt/v5"
)

func TestTokenChecks(t *testing.T) {
	each(t, func(t *testing.T, e *env) {
		e.must(201, "PUT", "/Patient/p", e.system(), `{"resourceType":"Patient","id":"p"}`)
		claims := func(mod func(*auth.Claims)) *auth.Claims {
			now := time.Now()
			c := &auth.Claims{RegisteredClaims: jwt.RegisteredClaims{Issuer: e.srv.URL, Audience: jwt.ClaimStrings{e.base}, Subject: "s", ID: "j1",
				IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}, Scope: "system/*.rs"}
			mod(c)
			return c
		}
		otherKey, _ := rsa.GenerateKey(rand.Reader, 2048)
		sign := func(m jwt.SigningMethod, key any, c *auth.Claims, kid string) string {
			tk := jwt.NewWithClaims(m, c)
			tk.Header["kid"] = kid
			s, err := tk.SignedString(key)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		good := e.tok(auth.Grant{Subject: "s", Scope: "system/*.rs"})
		e.must(200, "GET", "/Patient/p", good, "")
		parts := strings.Split(good, ".")
		payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
		payload = []byte(strings.Replace(string(payload), "system/*.rs", "system/*.cruds", 1))
		tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString(payload) + "." + parts[2]
		noneTok := sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims(func(*auth.Claims) {}), e.keys.KID())
		// Algorithm confusion: HS256 keyed with the server's public key, as published, in the forms an attacker
		// would try (PEM, DER, the JWKS document itself).
		pubDER, pubPEM := e.publicKey(t)
		hsPEM := sign(jwt.SigningMethodHS256, pubPEM, claims(func(*auth.Claims) {}), e.keys.KID())
		hsDER := sign(jwt.SigningMethodHS256, pubDER, claims(func(*auth.Claims) {}), e.keys.KID())
		hsJWKS := sign(jwt.SigningMethodHS256, e.keys.JWKS(), claims(func(*auth.Claims) {}), e.keys.KID())
		revoked := e.tok(auth.Grant{Subject: "s", Scope: "system/*.rs"})
		cases := []struct{ name, tok, want string }{
			{"Expired", e.signOwn(t, claims(func(c *auth.Claims) {
				c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Minute))
				c.IssuedAt = jwt.NewNumericDate(time.Now().Add(-time.Hour))
			})), "expired"},
			{"NotYetValid", e.signOwn(t, claims(func(c *auth.Claims) { c.NotBefore = jwt.NewNumericDate(time.Now().Add(time.Hour)) })), "not valid yet"},
			{"WrongAudience", e.signOwn(t, claims(func(c *auth.Claims) { c.Audience = jwt.ClaimStrings{"https://elsewhere/fhir"} })), "another audience"},
			{"WrongIssuer", e.signOwn(t, claims(func(c *auth.Claims) { c.Issuer = "https://evil" })), "another server"},
			{"NoExpiry", e.signOwn(t, claims(func(c *auth.Claims) { c.ExpiresAt = nil })), "exp"},
			{"OtherKey", sign(jwt.SigningMethodRS256, otherKey, claims(func(*auth.Claims) {}), e.keys.KID()), "signature is invalid"},
			{"UnknownKid", sign(jwt.SigningMethodRS256, otherKey, claims(func(*auth.Claims) {}), "nope"), "unknown key id"},
			{"AlgNone", noneTok, "signature is invalid"},
			{"HS256WithPublicKeyPEM", hsPEM, "algorithm other than RS256"},
			{"HS256WithPublicKeyDER", hsDER, "algorithm other than RS256"},
			{"HS256WithJWKS", hsJWKS, "algorithm other than RS256"},
			{"Tampered", tampered, "signature is invalid"},
			{"Revoked", revoked, "revoked"},
		}
		e.must(200, "GET", "/Patient/p", revoked, "") // cached as valid first
		c, _, _ := e.issuerParse(t, revoked)
		if err := e.revoke.Revoke(context.Background(), c.ID, c.ExpiresAt.Time); err != nil {
			t.Fatal(err)
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				r := e.must(401, "GET", "/Patient/p", tc.tok, "")
				d, _ := outcome(t, r)
				if !strings.Contains(d, tc.want) {
					t.Errorf("diagnostics %q do not say %q", d, tc.want)
				}
				if h := r.header.Get("WWW-Authenticate"); !strings.Contains(h, `error="invalid_token"`) {
					t.Errorf("WWW-Authenticate %q", h)
				}
			})
		}
		// The JWKS is public and holds the verification key.
		if r := e.must(200, "GET", e.srv.URL+"/.well-known/jwks.json", "", ""); !strings.Contains(string(r.body), e.keys.KID()) {
			t.Errorf("JWKS lacks the signing key: %s", r.body)
		}
	})
}

func (e *env) signOwn(t *testing.T, c *auth.Claims) string {
	t.Helper()
	s, _, err := e.issuer.MintClaims(c)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (e *env) issuerParse(t *testing.T, tok string) (*auth.Claims, string, error) {
	c := &auth.Claims{}
	_, _, err := jwt.NewParser().ParseUnverified(tok, c)
	if err != nil {
		t.Fatal(err)
	}
	return c, "", nil
}

// TestPatientIsolation checks that a patient token reaches another patient's data by no path.
func TestPatientIsolation(t *testing.T) {
	each(t, func(t *testing.T, e *env) {
		sys := e.system()
		put := func(path, body string) { e.must(201, "PUT", path, sys, body) }
		put("/Patient/a", `{"resourceType":"Patient","id":"a","name":[{"family":"Ames"}]}`)
		put("/Patient/b", `{"resourceType":"Patient","id":"b","name":[{"family":"Baker"}],"link":[{"other":{"reference":"Patient/a"},"type":"seealso"}]}`)
		put("/Practitioner/dr", `{"resourceType":"Practitioner","id":"dr","name":[{"family":"Doc"}]}`)
		put("/Observation/oa", `{"resourceType":"Observation","id":"oa","status":"final","code":{"text":"a"},"subject":{"reference":"Patient/a"},"hasMember":[{"reference":"Observation/ob"}]}`)
		put("/Observation/ob", `{"resourceType":"Observation","id":"ob","status":"final","code":{"text":"b"},"subject":{"reference":"Patient/b"},"performer":[{"reference":"Practitioner/dr"}]}`)
		put("/Binary/bb", `{"resourceType":"Binary","id":"bb","contentType":"text/plain","data":"c2VjcmV0"}`)
		put("/DocumentReference/db", `{"resourceType":"DocumentReference","id":"db","status":"current","subject":{"reference":"Patient/b"},"content":[{"attachment":{"url":"Binary/bb"}}]}`)
		put("/Binary/ba", `{"resourceType":"Binary","id":"ba","contentType":"text/plain","data":"bWluZQ=="}`)
		put("/DocumentReference/da", `{"resourceType":"DocumentReference","id":"da","status":"current","subject":{"reference":"Patient/a"},"content":[{"attachment":{"url":"`+e.base+`/Binary/ba"}}]}`)
		put("/Task/tb", `{"resourceType":"Task","id":"tb","status":"ready","intent":"order","for":{"reference":"Patient/b"},"focus":{"reference":"DocumentReference/db"}}`)
		put("/Provenance/pb", `{"resourceType":"Provenance","id":"pb","target":[{"reference":"Observation/ob"}],"recorded":"2024-01-01T00:00:00Z","agent":[{"who":{"reference":"Practitioner/dr"}}]}`)
		put("/Group/g", `{"resourceType":"Group","id":"g","type":"person","actual":true,"member":[{"entity":{"reference":"Patient/a"}},{"entity":{"reference":"Patient/b"}}]}`)
		e.must(200, "PUT", "/Observation/ob", sys, `{"resourceType":"Observation","id":"ob","status":"amended","code":{"text":"b2"},"subject":{"reference":"Patient/b"}}`)
		a := e.patient("a", "patient/*.rs")
		// Reads of B's things: 404, never 403 (existence is not disclosed).
		for _, p := range []string{"/Patient/b", "/Observation/ob", "/Observation/ob/_history/1", "/Observation/ob/_history", "/Binary/bb",
			"/DocumentReference/db", "/Task/tb", "/Provenance/pb", "/Group/g", "/Patient/b/_history"} {
			if r := e.do("GET", p, a, ""); r.status != 404 {
				t.Errorf("patient a GET %s: %d %s", p, r.status, r.body)
			}
		}
		// Searches: B's ids in the criteria, no criteria, includes, chains, reverse chains, POST with B in the body.
		searches := []string{
			"/Observation?subject=Patient/b", "/Observation?patient=b", "/Observation", "/Observation?_id=ob",
			"/Patient", "/Patient?_id=b", "/Patient?family=baker", "/Patient?link=Patient/a",
			"/Observation?_include=Observation:has-member", "/Observation?_include=*",
			"/Patient?_revinclude=Observation:subject&_revinclude=Patient:link",
			"/Observation?subject:Patient.family=baker", "/Patient?_has:Observation:patient:code:text=b",
			"/DocumentReference?_include=DocumentReference:subject", "/Binary", "/Task", "/Provenance",
			"/Task?_include=Task:focus", "/Observation?_id=oa&_revinclude=Provenance:target", "/Group",
		}
		leaks := func(r *resp) []string {
			var out []string
			for _, id := range bundleIDs(t, r, "") {
				switch id {
				case "Patient/b", "Observation/ob", "Binary/bb", "DocumentReference/db", "Task/tb", "Provenance/pb", "Group/g":
					out = append(out, id)
				}
			}
			return out
		}
		for _, q := range searches {
			r := e.must(200, "GET", q, a, "")
			if l := leaks(r); len(l) > 0 {
				t.Errorf("patient a %s leaked %v", q, l)
			}
		}
		r := e.must(200, "POST", "/Observation/_search", a, url.Values{"subject": {"Patient/b"}}.Encode(), "Content-Type: application/x-www-form-urlencoded")
		if len(bundleIDs(t, r, "")) != 0 {
			t.Errorf("POST _search with B in the body leaked: %s", r.body)
		}
		// History at type and system level.
		for _, q := range []string{"/Observation/_history", "/_history", "/Patient/_history"} {
			r := e.must(200, "GET", q, a, "")
			if l := leaks(r); len(l) > 0 {
				t.Errorf("patient a %s leaked %v", q, l)
			}
		}
		// Batches and transactions read with the same limits.
		r = e.must(200, "POST", "", a, `{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/b"}},{"request":{"method":"GET","url":"Observation?subject=Patient/b"}}]}`)
		if strings.Contains(string(r.body), `"id":"ob"`) || !strings.Contains(string(r.body), `"404 Not Found"`) {
			t.Errorf("batch leaked: %s", r.body)
		}
		// A sees its own, including its Binary through its DocumentReference (absolute URL) and shared Practitioners.
		for _, p := range []string{"/Patient/a", "/Observation/oa", "/Binary/ba", "/DocumentReference/da", "/Practitioner/dr"} {
			e.must(200, "GET", p, a, "")
		}
		r = e.must(200, "GET", "/Observation", a, "")
		if ids := bundleIDs(t, r, "match"); len(ids) != 1 || ids[0] != "Observation/oa" {
			t.Errorf("patient a's observations: %v", ids)
		}
		// Writes: into its own compartment yes, into B's no, and never to shared resources.
		aw := e.patient("a", "patient/*.cruds")
		e.must(201, "POST", "/Observation", aw, `{"resourceType":"Observation","status":"final","code":{"text":"self-reported"},"subject":{"reference":"Patient/a"}}`)
		e.must(403, "POST", "/Observation", aw, `{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/b"}}`)
		e.must(403, "PUT", "/Observation/oa", aw, `{"resourceType":"Observation","id":"oa","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/b"}}`)
		e.must(404, "DELETE", "/Observation/ob", aw, "")
		e.must(403, "PUT", "/Practitioner/dr", aw, `{"resourceType":"Practitioner","id":"dr"}`)
		e.must(200, "GET", "/Observation/ob", sys, "")
		// A patient/ token without a patient claim reaches nothing.
		orphan := e.tok(auth.Grant{Subject: "x", Scope: "patient/*.rs"})
		e.must(403, "GET", "/Patient/a", orphan, "")
		// A token for a RelatedPerson acting for A is confined to A.
		rp := e.tok(auth.Grant{Subject: "RelatedPerson/r", FHIRUser: "RelatedPerson/r", Patient: "a", Scope: "patient/*.rs"})
		e.must(200, "GET", "/Patient/a", rp, "")
		e.must(404, "GET", "/Patient/b", rp, "")
	})
}

func TestGranularScopes(t *testing.T) {
	each(t, func(t *testing.T, e *env) {
		sys := e.system()
		e.must(201, "PUT", "/Patient/a", sys, `{"resourceType":"Patient","id":"a"}`)
		lab := `{"resourceType":"Observation","id":"lab","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],"code":{"text":"glucose"},"subject":{"reference":"Patient/a"}}`
		soc := `{"resourceType":"Observation","id":"soc","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"social-history"}]}],"code":{"text":"smoking"},"subject":{"reference":"Patient/a"}}`
		e.must(201, "PUT", "/Observation/lab", sys, lab)
		e.must(201, "PUT", "/Observation/soc", sys, soc)
		tok := e.patient("a", "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory patient/Patient.r")
		e.must(200, "GET", "/Observation/lab", tok, "")
		e.must(404, "GET", "/Observation/soc", tok, "")
		r := e.must(200, "GET", "/Observation", tok, "")
		if ids := bundleIDs(t, r, "match"); len(ids) != 1 || ids[0] != "Observation/lab" {
			t.Errorf("restricted search: %v", ids)
		}
		r = e.must(200, "GET", "/Patient?_id=a", e.patient("a", "patient/Patient.rs patient/Observation.rs?category=laboratory"), "")
		_ = r
		// v1 scopes map to v2: read = rs.
		v1 := e.patient("a", "patient/Observation.read")
		e.must(200, "GET", "/Observation?code:text=smok", v1, "")
		e.must(403, "POST", "/Observation", v1, lab)
		// A restricted write scope allows only matching resources.
		w := e.patient("a", "patient/Observation.cu?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory")
		e.must(200, "PUT", "/Observation/lab", w, strings.Replace(lab, "glucose", "glucose fasting", 1))
		e.must(403, "PUT", "/Observation/soc", w, strings.Replace(soc, "smoking", "never smoked", 1))
		e.must(403, "PUT", "/Observation/lab", w, strings.Replace(soc, `"id":"soc"`, `"id":"lab"`, 1))
		// Malformed scopes grant nothing rather than something.
		bad := e.patient("a", "patient/Observation.sudc patient/Nope.rs")
		e.must(403, "GET", "/Observation/lab", bad, "")
	})
}

// publicKey is the server's published verification key, DER and PEM encoded, read back from its JWKS.
func (e *env) publicKey(t *testing.T) (der, pemBytes []byte) {
	t.Helper()
	var set struct {
		Keys []struct{ Kid, N, E string } `json:"keys"`
	}
	if err := json.Unmarshal(e.keys.JWKS(), &set); err != nil {
		t.Fatal(err)
	}
	for _, k := range set.Keys {
		if k.Kid != e.keys.KID() {
			continue
		}
		n, err1 := base64.RawURLEncoding.DecodeString(k.N)
		x, err2 := base64.RawURLEncoding.DecodeString(k.E)
		if err1 != nil || err2 != nil {
			t.Fatal("JWKS n/e are not base64url")
		}
		pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(x).Int64())}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		return der, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	}
	t.Fatal("the signing key is not in the JWKS")
	return nil, nil
}
