package fhir

import (
	"encoding/base64"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"unicode"
)

// maxIssues bounds how many problems one validation reports; past that the client has enough to fix.
const maxIssues = 50

// Validate checks a parsed resource against the R4 model: known resource type, every member a known element of
// its parent (names are case-sensitive), values of the right JSON type and FHIR primitive format (dates that
// exist on the calendar, 32-bit integers, ids, codes, base64), codes inside required value sets, cardinality
// (required elements present, arrays exactly where the element repeats), choice elements given once, primitive
// extensions (_x) aligned with their values, no empty objects, arrays or strings, and the structural invariants
// ext-1, dom-2 and dom-4. path prefixes issue expressions ("" for a top-level resource).
//
// It returns nil when the resource is valid.
func (s *Spec) Validate(res *Object, path string) []Issue {
	v := validator{s: s}
	v.resource(res, path, false)
	return v.issues
}

// ValidationError wraps validation issues as an *Error: 400 when the resource is malformed (syntax, types,
// cardinality, unknown elements, required codes), 422 when it is well-formed but breaks an invariant of its
// definition (a rule of the base profile).
func ValidationError(issues []Issue) *Error {
	status := http.StatusUnprocessableEntity
	for _, is := range issues {
		if is.Code != IssueInvariant {
			status = http.StatusBadRequest
		}
	}
	return &Error{Status: status, Issues: issues}
}

type validator struct {
	s      *Spec
	issues []Issue
}

func (v *validator) add(code IssueType, expr, format string, args ...any) {
	if len(v.issues) >= maxIssues {
		return
	}
	v.issues = append(v.issues, Issue{Severity: SeverityError, Code: code, Expression: expr, Diagnostics: fmt.Sprintf(format, args...)})
	if len(v.issues) == maxIssues {
		v.issues = append(v.issues, Issue{Severity: SeverityError, Code: IssueTooCostly, Diagnostics: fmt.Sprintf("validation stopped after %d issues", maxIssues)})
	}
}

func (v *validator) resource(o *Object, path string, contained bool) {
	rtv, has := o.Get("resourceType")
	rt, _ := rtv.(string)
	if !has {
		v.add(IssueRequired, join(path, "resourceType"), "resourceType is required")
		return
	}
	td := v.s.Types[rt]
	if rt == "" || td == nil || td.Kind != "resource" || td.Abstract {
		v.add(IssueValue, join(path, "resourceType"), "%s is not an R4 resource type", quoteJSON(rtv))
		return
	}
	if path == "" {
		path = rt
	}
	v.object(o, td.Root, path, true)
	if !contained {
		v.containedRefs(o, path)
	}
	if contained {
		if _, ok := o.Get("contained"); ok {
			v.add(IssueInvariant, path+".contained", "a contained resource must not contain other resources (dom-2)")
		}
		if m := o.Object("meta"); m != nil {
			if _, ok := m.Get("versionId"); ok {
				v.add(IssueInvariant, path+".meta.versionId", "a contained resource must not have meta.versionId (dom-4)")
			}
			if _, ok := m.Get("lastUpdated"); ok {
				v.add(IssueInvariant, path+".meta.lastUpdated", "a contained resource must not have meta.lastUpdated (dom-4)")
			}
		}
	}
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func (v *validator) object(o *Object, n *Node, path string, isResource bool) {
	if o.Len() == 0 {
		v.add(IssueStructure, path, "empty objects are not allowed in FHIR JSON")
		return
	}
	var present map[*ElementDef]string // element -> first JSON name seen
	mark := func(e *ElementDef, name string) {
		if present == nil {
			present = make(map[*ElementDef]string, o.Len())
		}
		if prev, ok := present[e]; ok && e.IsChoice() && prev != name && strings.TrimPrefix(prev, "_") != strings.TrimPrefix(name, "_") {
			v.add(IssueStructure, join(path, name), "only one of %s[x] may be given, found %s and %s", e.Name(), strings.TrimPrefix(prev, "_"), strings.TrimPrefix(name, "_"))
		}
		if _, ok := present[e]; !ok {
			present[e] = name
		}
	}
	for i, key := range o.Keys {
		val := o.Vals[i]
		if isResource && key == "resourceType" {
			continue
		}
		if strings.HasPrefix(key, "_") && len(key) > 1 {
			f := n.Fields[key[1:]]
			if f == nil || !f.Primitive {
				v.unknown(n, path, key)
				continue
			}
			mark(f.Elem, key)
			v.primitiveExtension(val, f, join(path, key[1:]), key)
			continue
		}
		f := n.Fields[key]
		if f == nil {
			v.unknown(n, path, key)
			continue
		}
		mark(f.Elem, key)
		v.field(o, key, val, f, join(path, key))
	}
	for _, e := range n.Elements {
		if e.Min > 0 && e.Max != 0 {
			if _, ok := present[e]; !ok {
				name := e.Name()
				if e.IsChoice() {
					name += "[x]"
				}
				v.add(IssueRequired, join(path, e.Name()), "%s is required (minimum cardinality %d)", name, e.Min)
			}
		}
		if e.Max == 0 {
			if name, ok := present[e]; ok {
				v.add(IssueStructure, join(path, name), "%s is not allowed here (maximum cardinality 0)", name)
			}
		}
	}
	// per-1: a period does not end before it starts.
	if n.Path == "Period" {
		start, end := o.String("start"), o.String("end")
		if start != "" && end != "" {
			s, err1 := ParseDateTime("dateTime", start, nil)
			e, err2 := ParseDateTime("dateTime", end, nil)
			if err1 == nil && err2 == nil {
				slo, _ := s.Range()
				_, ehi := e.Range()
				if !slo.Before(ehi) {
					v.add(IssueInvariant, path, "the period ends (%s) before it starts (%s) (per-1)", end, start)
				}
			}
		}
	}
	// ext-1: an extension has a value or nested extensions, never both.
	if n.Path == "Extension" {
		_, hasExt := o.Get("extension")
		hasValue := false
		for _, k := range o.Keys {
			if strings.HasPrefix(k, "value") || strings.HasPrefix(k, "_value") {
				hasValue = true
			}
		}
		if hasExt && hasValue {
			v.add(IssueInvariant, path, "an extension must have either extensions or value[x], not both (ext-1)")
		}
	}
}

// containedRefs checks ref-1 (a local reference "#id" names a contained resource) and dom-3 (every contained
// resource is referenced from the resource, or refers to it with "#").
func (v *validator) containedRefs(o *Object, path string) {
	raw, _ := o.Get("contained")
	list, _ := raw.([]any)
	ids := map[string]bool{}
	for _, c := range list {
		if co, ok := c.(*Object); ok {
			ids[co.String("id")] = false
		}
	}
	var walk func(x any, p string)
	walk = func(x any, p string) {
		switch t := x.(type) {
		case *Object:
			for i, k := range t.Keys {
				if s, ok := t.Vals[i].(string); ok && k == "reference" && strings.HasPrefix(s, "#") {
					if s == "#" {
						continue
					}
					if _, ok := ids[s[1:]]; !ok {
						v.add(IssueInvariant, p+"."+k, "local reference %s names no contained resource (ref-1)", s)
					} else {
						ids[s[1:]] = true
					}
					continue
				}
				walk(t.Vals[i], p+"."+k)
			}
		case []any:
			for i, e := range t {
				walk(e, p+"["+strconv.Itoa(i)+"]")
			}
		}
	}
	walk(o, path)
	// Contained resources that point back at the container count as referenced.
	for i, c := range list {
		co, ok := c.(*Object)
		if !ok {
			continue
		}
		if id := co.String("id"); id == "" {
			v.add(IssueInvariant, path+".contained["+strconv.Itoa(i)+"]", "a contained resource needs an id so it can be referenced (dom-3)")
		} else if !ids[id] && !refersTo(co, "#") {
			v.add(IssueInvariant, path+".contained["+strconv.Itoa(i)+"]", "contained resource %q is not referenced from the resource (dom-3)", id)
		}
	}
}

func refersTo(x any, ref string) bool {
	switch t := x.(type) {
	case *Object:
		for i, k := range t.Keys {
			if s, ok := t.Vals[i].(string); ok && k == "reference" && s == ref {
				return true
			}
			if refersTo(t.Vals[i], ref) {
				return true
			}
		}
	case []any:
		for _, e := range t {
			if refersTo(e, ref) {
				return true
			}
		}
	}
	return false
}

func (v *validator) unknown(n *Node, path, key string) {
	hint := ""
	bare := strings.TrimPrefix(key, "_")
	for name := range n.Fields {
		if strings.EqualFold(name, bare) {
			hint = fmt.Sprintf(" (did you mean %q? FHIR JSON names are case-sensitive)", name)
			break
		}
	}
	v.add(IssueStructure, join(path, key), "unknown element %q in %s%s", key, n.Path, hint)
}

func (v *validator) field(parent *Object, key string, val any, f *Field, path string) {
	if f.Array {
		arr, ok := val.([]any)
		if !ok {
			v.add(IssueStructure, path, "%s repeats (maximum cardinality %s) and must be a JSON array", key, maxString(f.Elem.Max))
			return
		}
		if len(arr) == 0 {
			v.add(IssueStructure, path, "empty arrays are not allowed in FHIR JSON")
			return
		}
		if f.Elem.Max > 1 && len(arr) > f.Elem.Max {
			v.add(IssueStructure, path, "%s allows at most %d values, found %d", key, f.Elem.Max, len(arr))
		}
		var ext []any
		if f.Primitive {
			if e, ok := parent.Get("_" + key); ok {
				ext, _ = e.([]any)
				if ea, isArr := e.([]any); isArr && len(ea) != len(arr) {
					v.add(IssueStructure, path, "%s and _%s must have the same number of entries (%d and %d)", key, key, len(arr), len(ea))
				}
			}
		}
		for i, item := range arr {
			ip := path + "[" + strconv.Itoa(i) + "]"
			if item == nil {
				if f.Primitive && i < len(ext) && ext[i] != nil {
					continue // value absent, extension present: allowed
				}
				v.add(IssueStructure, ip, "null is only allowed in a primitive array where _%s has an extension at the same position", key)
				continue
			}
			v.value(item, f, ip)
		}
		return
	}
	if _, isArr := val.([]any); isArr {
		v.add(IssueStructure, path, "%s does not repeat (maximum cardinality 1) and must not be a JSON array", key)
		return
	}
	if val == nil {
		v.add(IssueStructure, path, "null is not allowed as a value")
		return
	}
	v.value(val, f, path)
}

func maxString(m int) string {
	if m < 0 {
		return "*"
	}
	return strconv.Itoa(m)
}

func (v *validator) value(val any, f *Field, path string) {
	switch {
	case f.Primitive:
		v.primitive(val, f, path)
	case f.Resource:
		o, ok := val.(*Object)
		if !ok {
			v.add(IssueStructure, path, "expected a resource (a JSON object), found %s", jsonKind(val))
			return
		}
		if f.Type != "Resource" && o.String("resourceType") != f.Type {
			rt, _ := o.Get("resourceType")
			v.add(IssueStructure, path+".resourceType", "expected a %s here, found %s", f.Type, quoteJSON(rt))
			return
		}
		v.resource(o, path, f.Elem.Path == "contained")
	default:
		o, ok := val.(*Object)
		if !ok {
			v.add(IssueStructure, path, "expected a %s (a JSON object), found %s", f.Type, jsonKind(val))
			return
		}
		v.object(o, f.Node, path, false)
	}
}

func (v *validator) primitiveExtension(val any, f *Field, path, key string) {
	elem := v.s.Types["Element"].Root
	check := func(item any, p string) {
		o, ok := item.(*Object)
		if !ok {
			v.add(IssueStructure, p, "%s must hold an object with id and/or extension, found %s", key, jsonKind(item))
			return
		}
		v.object(o, elem, p, false)
	}
	if f.Array {
		arr, ok := val.([]any)
		if !ok {
			v.add(IssueStructure, path, "%s must be a JSON array, as %s repeats", key, key[1:])
			return
		}
		allNull := true
		for i, item := range arr {
			if item == nil {
				continue
			}
			allNull = false
			check(item, path+"["+strconv.Itoa(i)+"]")
		}
		if allNull {
			v.add(IssueStructure, path, "%s holds only nulls", key)
		}
		return
	}
	check(val, path)
}

func jsonKind(v any) string {
	switch x := v.(type) {
	case *Object:
		return "an object"
	case []any:
		return "an array"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	default:
		return fmt.Sprintf("%T", x)
	}
}

func quoteJSON(v any) string { return string(AppendJSON(nil, v)) }

func (v *validator) primitive(val any, f *Field, path string) {
	typ := f.Type
	switch typ {
	case "boolean":
		if _, ok := val.(bool); !ok {
			v.add(IssueValue, path, "expected a boolean (true or false), found %s", jsonKind(val))
		}
		return
	case "integer", "unsignedInt", "positiveInt":
		n, ok := val.(json.Number)
		if !ok {
			v.add(IssueValue, path, "expected a JSON number (%s), found %s", typ, jsonKind(val))
			return
		}
		i, err := strconv.ParseInt(string(n), 10, 32)
		if err != nil {
			v.add(IssueValue, path, "%s is not a valid %s: FHIR integers are whole numbers from -2147483648 to 2147483647", n, typ)
			return
		}
		if typ == "unsignedInt" && i < 0 {
			v.add(IssueValue, path, "%s is not a valid unsignedInt: must be 0 or more", n)
		}
		if typ == "positiveInt" && i < 1 {
			v.add(IssueValue, path, "%s is not a valid positiveInt: must be 1 or more", n)
		}
		return
	case "decimal":
		if _, ok := val.(json.Number); !ok {
			v.add(IssueValue, path, "expected a JSON number (decimal), found %s", jsonKind(val))
		}
		return
	}
	s, ok := val.(string)
	if !ok {
		v.add(IssueValue, path, "expected a JSON string (%s), found %s", typ, jsonKind(val))
		return
	}
	if s == "" {
		v.add(IssueValue, path, "empty strings are not allowed in FHIR; omit the element instead")
		return
	}
	if err := checkPrimitive(typ, s); err != nil {
		v.add(IssueValue, path, "%s", err.Error())
		return
	}
	if f.ValueSet != nil && !f.ValueSet.Contains(s) {
		v.add(IssueCodeInvalid, path, "%q is not in the required value set %s%s", s, f.ValueSet.URL, codeList(f.ValueSet))
	}
}

func codeList(vs *ValueSet) string {
	if len(vs.codes) > 15 {
		return ""
	}
	codes := make([]string, 0, len(vs.codes))
	for c := range vs.codes {
		codes = append(codes, c)
	}
	sort.Strings(codes)
	return " (" + strings.Join(codes, ", ") + ")"
}

// checkPrimitive checks the lexical form of a string-valued FHIR primitive.
func checkPrimitive(typ, s string) error {
	switch typ {
	case "id":
		if len(s) > 64 {
			return fmt.Errorf("%q is not a valid id: at most 64 characters", s)
		}
		for i := 0; i < len(s); i++ {
			if !isIDChar(s[i]) {
				return fmt.Errorf("%q is not a valid id: only A-Z, a-z, 0-9, '-' and '.' are allowed", s)
			}
		}
	case "code":
		if strings.TrimSpace(s) != s || strings.Contains(s, "  ") || strings.ContainsAny(s, "\t\r\n") {
			return fmt.Errorf("%q is not a valid code: no leading, trailing or repeated whitespace", s)
		}
	case "uri", "url", "canonical":
		if strings.IndexFunc(s, unicode.IsSpace) >= 0 {
			return fmt.Errorf("%q is not a valid %s: whitespace is not allowed", s, typ)
		}
	case "oid":
		if !strings.HasPrefix(s, "urn:oid:") || !validOID(s[8:]) {
			return fmt.Errorf("%q is not a valid oid: expected urn:oid: followed by dotted numbers", s)
		}
	case "uuid":
		if !validUUIDURN(s) {
			return fmt.Errorf("%q is not a valid uuid: expected urn:uuid: followed by a lower-case UUID", s)
		}
	case "date", "dateTime", "instant":
		if _, err := ParseDateTime(typ, s, nil); err != nil {
			return err
		}
	case "time":
		return ParseTime(s)
	case "base64Binary":
		if _, err := DecodeBase64(s); err != nil {
			return fmt.Errorf("not valid base64Binary: %v", err)
		}
	case "xhtml":
		return checkXHTML(s)
	}
	return nil
}

func isIDChar(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.'
}

// ValidID reports whether s is a valid FHIR resource id.
func ValidID(s string) bool { return s != "" && checkPrimitive("id", s) == nil }

func validOID(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) < 2 || len(parts[0]) != 1 || parts[0][0] < '0' || parts[0][0] > '2' {
		return false
	}
	for _, p := range parts[1:] {
		if p == "" || (len(p) > 1 && p[0] == '0') {
			return false
		}
		for _, c := range p {
			if c < '0' || c > '9' {
				return false
			}
		}
	}
	return true
}

func validUUIDURN(s string) bool {
	u, ok := strings.CutPrefix(s, "urn:uuid:")
	if !ok || len(u) != 36 {
		return false
	}
	for i, c := range u {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return false
			}
		}
	}
	return true
}

// DecodeBase64 decodes a FHIR base64Binary value (standard alphabet, padded; whitespace between groups allowed).
func DecodeBase64(s string) ([]byte, error) {
	if strings.IndexFunc(s, unicode.IsSpace) >= 0 {
		s = strings.Map(func(r rune) rune {
			if unicode.IsSpace(r) {
				return -1
			}
			return r
		}, s)
	}
	return base64.StdEncoding.Strict().DecodeString(s)
}

// checkXHTML checks narrative: well-formed XML whose root is a div (FHIR's xhtml rules, minus the element list).
func checkXHTML(s string) error {
	d := xml.NewDecoder(strings.NewReader(s))
	d.Entity = xml.HTMLEntity
	depth := 0
	sawRoot := false
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("narrative is not well-formed XHTML: %v", err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if depth == 0 {
				if sawRoot {
					return fmt.Errorf("narrative must have exactly one root <div> element")
				}
				if t.Name.Local != "div" {
					return fmt.Errorf("narrative must have a <div> root element, found <%s>", t.Name.Local)
				}
				sawRoot = true
			}
			if t.Name.Local == "script" || t.Name.Local == "object" || t.Name.Local == "form" || t.Name.Local == "iframe" {
				return fmt.Errorf("narrative must not contain <%s> (txt-1)", t.Name.Local)
			}
			depth++
		case xml.EndElement:
			depth--
		case xml.CharData:
			if depth == 0 && strings.TrimSpace(string(t)) != "" {
				return fmt.Errorf("narrative has text outside its <div> root")
			}
		}
	}
	if !sawRoot {
		return fmt.Errorf("narrative must have a <div> root element")
	}
	return nil
}
