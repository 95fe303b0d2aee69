package fhir

import (
	"net/http"
	"strings"
	"time"
)

// ParseResource parses and validates one resource from its JSON. wantType, when not "", is the type the URL
// names. It returns the parsed resource, or a 400 *Error whose issues say what is wrong and where.
func ParseResource(raw []byte, wantType string) (*Object, error) {
	v, err := ParseJSON(raw)
	if err != nil {
		return nil, Errorf(http.StatusBadRequest, IssueStructure, "the body is not valid JSON: %v", err)
	}
	o, ok := v.(*Object)
	if !ok {
		return nil, Errorf(http.StatusBadRequest, IssueStructure, "the body must be a JSON object holding a FHIR resource, found %s", jsonKind(v))
	}
	if wantType != "" {
		rt, _ := o.Get("resourceType")
		if s, _ := rt.(string); s != wantType {
			if rt == nil {
				return nil, At(http.StatusBadRequest, IssueRequired, "resourceType", "resourceType is required (expected %q)", wantType)
			}
			return nil, At(http.StatusBadRequest, IssueInvalid, "resourceType", "resourceType is %s but the URL is for %s", quoteJSON(rt), wantType)
		}
	}
	if issues := R4().Validate(o, ""); len(issues) > 0 {
		return nil, ValidationError(issues)
	}
	return o, nil
}

// Meta is the server-managed part of a stored resource.
type Meta struct {
	VersionID   string
	LastUpdated time.Time
}

// StampMeta sets the server-managed elements of a resource: id first, then meta.versionId and meta.lastUpdated
// merged into whatever meta the client gave (profile, security, tag and source are kept as sent).
func StampMeta(o *Object, id string, m Meta) {
	o.SetFirst("id", id, 1)
	meta := o.Object("meta")
	if meta == nil {
		meta = &Object{}
		pos := 2
		o.SetFirst("meta", meta, pos)
	}
	meta.SetFirst("versionId", m.VersionID, 0)
	meta.SetFirst("lastUpdated", FormatInstant(m.LastUpdated), 1)
}

// StripServerMeta removes meta.versionId and meta.lastUpdated (and meta itself when nothing else is left), so that
// two versions can be compared by their content.
func StripServerMeta(o *Object) {
	meta := o.Object("meta")
	if meta == nil {
		return
	}
	meta.Delete("versionId")
	meta.Delete("lastUpdated")
	if meta.Len() == 0 {
		o.Delete("meta")
	}
}

// ResourceKey returns "Type/id" of a parsed resource.
func ResourceKey(o *Object) string { return o.String("resourceType") + "/" + o.String("id") }

// SplitReference splits a relative literal reference "Type/id" or "Type/id/_history/v" into its parts. ok is false
// for anything else (absolute URLs, contained "#x", urn:).
func SplitReference(ref string) (typ, id, version string, ok bool) {
	parts := strings.Split(ref, "/")
	switch {
	case len(parts) == 2:
	case len(parts) == 4 && parts[2] == "_history":
		version = parts[3]
	default:
		return "", "", "", false
	}
	if !R4().IsResourceType(parts[0]) || !ValidID(parts[1]) {
		return "", "", "", false
	}
	return parts[0], parts[1], version, true
}
