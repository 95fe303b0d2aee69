package rights

import (
	"encoding/json"
	"strconv"

	"github.com/carta-fhir/carta/fhir"
)

// obj builds an ordered JSON object from key/value pairs; nil values and empty strings are left out, so optional
// parts can be passed unconditionally.
func obj(kv ...any) *fhir.Object {
	o := &fhir.Object{}
	for i := 0; i+1 < len(kv); i += 2 {
		k := kv[i].(string)
		switch v := kv[i+1].(type) {
		case nil:
			continue
		case string:
			if v == "" {
				continue
			}
		case *fhir.Object:
			if v == nil {
				continue
			}
		case []any:
			if len(v) == 0 {
				continue
			}
		}
		o.Set(k, kv[i+1])
	}
	return o
}

func arr(vs ...any) []any {
	out := make([]any, 0, len(vs))
	for _, v := range vs {
		if o, ok := v.(*fhir.Object); ok && o == nil {
			continue
		}
		if v != nil {
			out = append(out, v)
		}
	}
	return out
}

func coding(system, code, display string) *fhir.Object {
	return obj("system", system, "code", code, "display", display)
}

func concept(system, code, display string) *fhir.Object {
	return obj("coding", arr(coding(system, code, display)))
}

func ref(reference string) *fhir.Object {
	if reference == "" {
		return nil
	}
	return obj("reference", reference)
}

func refDisplay(reference, display string) *fhir.Object {
	if reference == "" {
		return nil
	}
	return obj("reference", reference, "display", display)
}

func number(f float64) json.Number { return json.Number(strconv.FormatFloat(f, 'f', -1, 64)) }

// list returns the array under key, or nil.
func list(o *fhir.Object, key string) []any {
	if o == nil {
		return nil
	}
	v, _ := o.Get(key)
	a, _ := v.([]any)
	return a
}

// objects returns the objects in the array under key.
func objects(o *fhir.Object, key string) []*fhir.Object {
	var out []*fhir.Object
	for _, v := range list(o, key) {
		if ob, ok := v.(*fhir.Object); ok {
			out = append(out, ob)
		}
	}
	return out
}

// codings returns the codings of the CodeableConcept under key.
func codings(o *fhir.Object, key string) []*fhir.Object {
	return objects(o.Object(key), "coding")
}

// codeIn returns the code of the first coding of the CodeableConcept under key in the given system, or "".
func codeIn(o *fhir.Object, key, system string) string {
	if o == nil {
		return ""
	}
	for _, c := range codings(o, key) {
		if c.String("system") == system {
			return c.String("code")
		}
	}
	return ""
}

// refOf returns the reference string of the Reference under key.
func refOf(o *fhir.Object, key string) string {
	if o == nil {
		return ""
	}
	return o.Object(key).String("reference")
}

// ioType returns the code of a Task input or output in the given system.
func ioType(io *fhir.Object, system string) string { return codeIn(io, "type", system) }

// ios returns the Task inputs (or outputs) of a type.
func ios(task *fhir.Object, key, system, code string) []*fhir.Object {
	var out []*fhir.Object
	for _, io := range objects(task, key) {
		if ioType(io, system) == code {
			out = append(out, io)
		}
	}
	return out
}

// valueString returns a Task input/output value rendered as text: a string or code, a Coding's code, a
// Reference, an Attachment's title or URL.
func valueString(io *fhir.Object) string {
	for _, k := range []string{"valueString", "valueCode", "valueUri", "valueUrl", "valueMarkdown"} {
		if s := io.String(k); s != "" {
			return s
		}
	}
	if c := io.Object("valueCoding"); c != nil {
		return c.String("code")
	}
	if c := io.Object("valueCodeableConcept"); c != nil {
		if cs := objects(c, "coding"); len(cs) > 0 {
			return cs[0].String("code")
		}
		return c.String("text")
	}
	if r := io.Object("valueReference"); r != nil {
		if s := r.String("reference"); s != "" {
			return s
		}
		return r.String("display")
	}
	return ""
}

// setIO replaces every input/output of a type with the given ones (appending when there were none).
func setIO(task *fhir.Object, key, system, code string, values ...*fhir.Object) {
	var kept []any
	for _, v := range list(task, key) {
		if io, ok := v.(*fhir.Object); ok && ioType(io, system) == code {
			continue
		}
		kept = append(kept, v)
	}
	for _, v := range values {
		kept = append(kept, v)
	}
	if len(kept) == 0 {
		task.Delete(key)
		return
	}
	task.Set(key, kept)
}

// addIO appends an input/output.
func addIO(task *fhir.Object, key string, io *fhir.Object) {
	task.Set(key, append(list(task, key), io))
}

func io(system, code, display, valueKey string, value any) *fhir.Object {
	return obj("type", concept(system, code, display), valueKey, value)
}

// extension returns the extension with the url, or nil.
func extension(o *fhir.Object, url string) *fhir.Object {
	for _, e := range objects(o, "extension") {
		if e.String("url") == url {
			return e
		}
	}
	return nil
}

// setExtension replaces (or adds) the extension with e's url.
func setExtension(o *fhir.Object, e *fhir.Object) {
	url := e.String("url")
	var out []any
	done := false
	for _, v := range list(o, "extension") {
		if x, ok := v.(*fhir.Object); ok && x.String("url") == url {
			if !done {
				out = append(out, e)
				done = true
			}
			continue
		}
		out = append(out, v)
	}
	if !done {
		out = append(out, e)
	}
	o.Set("extension", out)
}

// subValue returns the value[x] of a sub-extension as text (date, string, code or reference).
func subValue(e *fhir.Object, url string) string {
	for _, x := range objects(e, "extension") {
		if x.String("url") == url {
			for _, k := range []string{"valueDate", "valueString", "valueCode", "valueDateTime"} {
				if s := x.String(k); s != "" {
					return s
				}
			}
			return x.Object("valueReference").String("reference")
		}
	}
	return ""
}
