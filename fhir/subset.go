package fhir

// Subsetting for _summary and _elements (http.html#read, search.html#summary).

// subsettedTag marks a resource returned with only some of its elements.
var subsettedTag = &Object{Keys: []string{"system", "code"}, Vals: []any{"http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "SUBSETTED"}}

// Subset reduces a resource for _summary (true, text, data) or _elements, and tags it SUBSETTED. It returns false
// when nothing needed to change (summary "" or "false" and no elements).
func Subset(res *Object, summary string, elements []string) bool {
	td := R4().Types[res.String("resourceType")]
	if td == nil {
		return false
	}
	keep := func(name string) bool { return name == "resourceType" || name == "id" || name == "meta" }
	mandatory := func(name string) bool {
		e := td.Root.Element(name)
		return e != nil && e.Min > 0
	}
	base := func(key string) string {
		if len(key) > 1 && key[0] == '_' {
			key = key[1:]
		}
		for _, f := range td.Root.Fields {
			if f.Name == key {
				return f.Elem.Name()
			}
		}
		return key
	}
	var want func(name string) bool
	switch {
	case len(elements) > 0:
		set := map[string]bool{}
		for _, e := range elements {
			set[e] = true
		}
		want = func(name string) bool { return keep(name) || mandatory(name) || set[name] }
	case summary == "true":
		want = func(name string) bool {
			e := td.Root.Element(name)
			return keep(name) || mandatory(name) || (e != nil && e.Summary)
		}
	case summary == "text":
		want = func(name string) bool { return keep(name) || mandatory(name) || name == "text" }
	case summary == "data":
		want = func(name string) bool { return name != "text" }
	default:
		return false
	}
	out := &Object{}
	for i, k := range res.Keys {
		if want(base(k)) {
			out.Keys = append(out.Keys, k)
			out.Vals = append(out.Vals, res.Vals[i])
		}
	}
	res.Keys, res.Vals = out.Keys, out.Vals
	meta := res.Object("meta")
	if meta == nil {
		meta = &Object{}
		res.SetFirst("meta", meta, 2)
	}
	tags, _ := meta.Get("tag")
	list, _ := tags.([]any)
	meta.Set("tag", append(list, subsettedTag))
	return true
}
