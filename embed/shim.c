// See shim.h. Nothing here reads CPython object memory: every access goes
// through an exported function or an exported object's address.
#include "shim.h"
#include "_cgo_export.h" // spkHostCall

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define Py_file_input 257
#define Py_eval_input 258

// Py_buffer, whose layout is part of the stable ABI (3.11+).
typedef struct {
	void *buf;
	PyObject *obj;
	Py_ssize_t len;
	Py_ssize_t itemsize;
	int readonly;
	int ndim;
	char *format;
	Py_ssize_t *shape;
	Py_ssize_t *strides;
	Py_ssize_t *suboffsets;
	void *internal;
} spk_Py_buffer;

#define SPK_PyBUF_READ 0x100
#define SPK_PyBUF_SIMPLE 0

static struct {
	// Runtime and initialisation.
	const char *(*Py_GetVersion)(void);
	int (*Py_IsInitialized)(void);
	void (*Py_InitializeEx)(int);
	wchar_t *(*Py_DecodeLocale)(const char *, size_t *);
	void (*Py_SetPythonHome)(const wchar_t *);
	void (*Py_SetProgramName)(const wchar_t *);
	int *Py_IgnoreEnvironmentFlag;
	PyInitConfig *(*PyInitConfig_Create)(void);
	void (*PyInitConfig_Free)(PyInitConfig *);
	int (*PyInitConfig_SetInt)(PyInitConfig *, const char *, int64_t);
	int (*PyInitConfig_SetStr)(PyInitConfig *, const char *, const char *);
	int (*PyInitConfig_GetError)(PyInitConfig *, const char **);
	int (*Py_InitializeFromInitConfig)(PyInitConfig *);

	// Thread states and interpreters.
	PyThreadState *(*PyEval_SaveThread)(void);
	void (*PyEval_RestoreThread)(PyThreadState *);
	PyThreadState *(*PyThreadState_New)(PyInterpreterState *);
	void (*PyThreadState_Clear)(PyThreadState *);
	void (*PyThreadState_DeleteCurrent)(void);
	void (*PyThreadState_Delete)(PyThreadState *);
	int (*PyThreadState_SetAsyncExc)(unsigned long, PyObject *);
	PyThreadState *(*PyThreadState_Swap)(PyThreadState *);
	PyThreadState *(*PyGILState_GetThisThreadState)(void);
	void (*_PyThreadState_SetCurrent)(PyThreadState *); // 3.11: binds an empty GILState slot
	PyInterpreterState *(*PyThreadState_GetInterpreter)(PyThreadState *);
	PyThreadState *(*PyThreadState_Get)(void);
	PyInterpreterState *(*PyInterpreterState_Main)(void);
	int64_t (*PyInterpreterState_GetID)(PyInterpreterState *);
	PyThreadState *(*Py_NewInterpreter)(void);
	spk_PyStatus (*Py_NewInterpreterFromConfig)(PyThreadState **, const spk_PyInterpreterConfig *);
	void (*Py_EndInterpreter)(PyThreadState *);

	// Objects.
	PyObject *None;
	PyObject *PyBytes_Type;
	PyObject *PyDict_Type;
	PyObject **PyExc_ValueError;
	PyObject *(*PyObject_Type)(PyObject *);
	void (*Py_DecRef)(PyObject *);
	PyObject *(*PyImport_ImportModule)(const char *);
	PyObject *(*PyImport_AddModule)(const char *);
	PyObject *(*PyModule_GetDict)(PyObject *);
	PyObject *(*PyRun_StringFlags)(const char *, int, PyObject *, PyObject *, void *);
	PyObject *(*PyObject_GetAttrString)(PyObject *, const char *);
	PyObject *(*PyObject_Call)(PyObject *, PyObject *, PyObject *);
	PyObject *(*PyObject_CallFunctionObjArgs)(PyObject *, ...);
	PyObject *(*PyObject_Str)(PyObject *);
	PyObject *(*PySequence_Tuple)(PyObject *);
	PyObject *(*PyTuple_New)(Py_ssize_t);
	const char *(*PyUnicode_AsUTF8AndSize)(PyObject *, Py_ssize_t *);
	PyObject *(*PyUnicode_FromString)(const char *);
	PyObject *(*PyUnicode_Join)(PyObject *, PyObject *);
	PyObject *(*PyMarshal_ReadObjectFromString)(const char *, Py_ssize_t);
	PyObject *(*PyMarshal_WriteObjectToString)(PyObject *, int);
	int (*PyBytes_AsStringAndSize)(PyObject *, char **, Py_ssize_t *);
	void (*PyErr_Fetch)(PyObject **, PyObject **, PyObject **);
	void (*PyErr_NormalizeException)(PyObject **, PyObject **, PyObject **);
	void (*PyErr_Clear)(void);
	int (*PyErr_ExceptionMatches)(PyObject *);

	// Buffers.
	PyObject *PyMemoryView_Type;
	PyObject **PyExc_BufferError;
	PyObject *(*PyMemoryView_FromMemory)(char *, Py_ssize_t, int);
	PyObject *(*PyBytes_FromStringAndSize)(const char *, Py_ssize_t);
	int (*PyObject_GetBuffer)(PyObject *, spk_Py_buffer *, int);
	void (*PyBuffer_Release)(spk_Py_buffer *);
	Py_ssize_t (*PyTuple_Size)(PyObject *);
	PyObject *(*PyTuple_GetItem)(PyObject *, Py_ssize_t);
	int (*PyTuple_SetItem)(PyObject *, Py_ssize_t, PyObject *);
	void (*Py_IncRef)(PyObject *);

	// Host calls (Python calls Go).
	PyObject *(*PyCFunction_NewEx)(void *, PyObject *, PyObject *);
	PyObject *(*PyLong_FromUnsignedLongLong)(unsigned long long);
	unsigned long long (*PyLong_AsUnsignedLongLong)(PyObject *);
	int (*PyObject_SetAttr)(PyObject *, PyObject *, PyObject *);
	int (*PyObject_SetAttrString)(PyObject *, const char *, PyObject *);
	PyObject *(*PyUnicode_InternFromString)(const char *);
	void (*PyErr_SetString)(PyObject *, const char *);
	PyObject *(*PyErr_Occurred)(void);
	PyObject **PyExc_TypeError;
	PyObject **PyExc_RuntimeError;
	PyObject *NotImplemented;
	PyObject *True;
	PyObject *False;
	PyObject *PyLong_Type;
	PyObject *PyFloat_Type;
	PyObject *PyUnicode_Type;
	int (*PyDict_Next)(PyObject *, Py_ssize_t *, PyObject **, PyObject **);
	long (*PyLong_AsLongAndOverflow)(PyObject *, int *);
	double (*PyFloat_AsDouble)(PyObject *);

	// Host calls with out-of-band buffers.
	int (*PyObject_CheckBuffer)(PyObject *);
	PyObject *PyList_Type;
	PyObject *PyTuple_Type;
	Py_ssize_t (*PyList_Size)(PyObject *);
	PyObject *(*PyList_GetItem)(PyObject *, Py_ssize_t);
	char *(*PyBytes_AsString)(PyObject *);
	PyObject *(*PyErr_NoMemory)(void);
} api;

static void *lib;
static int py_minor; // of the loaded library: 11, 12, ...

static void note_binding(void);
static __thread struct spk_tsent *tls_ents; // this thread's cached thread states

int spk_load(const char *path, char **err) {
	const char *missing = NULL;
	lib = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
	if (lib == NULL) {
		const char *e = dlerror();
		*err = strdup(e ? e : "dlopen failed");
		return -1;
	}
#define REQ(name)                                      \
	do {                                               \
		*(void **)&api.name = dlsym(lib, #name);       \
		if (api.name == NULL) {                        \
			missing = #name;                           \
			goto fail;                                 \
		}                                              \
	} while (0)
#define OPT(name) (*(void **)&api.name = dlsym(lib, #name))
	REQ(Py_GetVersion);
	{
		const char *dot = strchr(api.Py_GetVersion(), '.');
		py_minor = dot ? atoi(dot + 1) : 0;
	}
	REQ(Py_IsInitialized);
	REQ(Py_InitializeEx);
	REQ(Py_DecodeLocale);
	OPT(Py_SetPythonHome);
	OPT(Py_SetProgramName);
	OPT(Py_IgnoreEnvironmentFlag);
	OPT(PyInitConfig_Create);
	OPT(PyInitConfig_Free);
	OPT(PyInitConfig_SetInt);
	OPT(PyInitConfig_SetStr);
	OPT(PyInitConfig_GetError);
	OPT(Py_InitializeFromInitConfig);
	REQ(PyEval_SaveThread);
	REQ(PyEval_RestoreThread);
	REQ(PyThreadState_New);
	REQ(PyThreadState_Clear);
	REQ(PyThreadState_DeleteCurrent);
	REQ(PyThreadState_Delete);
	REQ(PyThreadState_SetAsyncExc);
	REQ(PyThreadState_Swap);
	REQ(PyGILState_GetThisThreadState);
	OPT(_PyThreadState_SetCurrent);
	REQ(PyThreadState_GetInterpreter);
	REQ(PyThreadState_Get);
	REQ(PyInterpreterState_Main);
	REQ(PyInterpreterState_GetID);
	REQ(Py_NewInterpreter);
	OPT(Py_NewInterpreterFromConfig);
	REQ(Py_EndInterpreter);
	*(void **)&api.None = dlsym(lib, "_Py_NoneStruct");
	if (api.None == NULL) {
		missing = "_Py_NoneStruct";
		goto fail;
	}
	REQ(PyExc_ValueError);
	REQ(PyBytes_Type);
	REQ(PyDict_Type);
	REQ(PyObject_Type);
	REQ(Py_DecRef);
	REQ(PyImport_ImportModule);
	REQ(PyImport_AddModule);
	REQ(PyModule_GetDict);
	REQ(PyRun_StringFlags);
	REQ(PyObject_GetAttrString);
	REQ(PyObject_Call);
	REQ(PyObject_CallFunctionObjArgs);
	REQ(PyObject_Str);
	REQ(PySequence_Tuple);
	REQ(PyTuple_New);
	REQ(PyUnicode_AsUTF8AndSize);
	REQ(PyUnicode_FromString);
	REQ(PyUnicode_Join);
	REQ(PyMarshal_ReadObjectFromString);
	REQ(PyMarshal_WriteObjectToString);
	REQ(PyBytes_AsStringAndSize);
	REQ(PyErr_Fetch);
	REQ(PyErr_NormalizeException);
	REQ(PyErr_Clear);
	REQ(PyErr_ExceptionMatches);
	REQ(PyMemoryView_Type);
	REQ(PyExc_BufferError);
	REQ(PyMemoryView_FromMemory);
	REQ(PyBytes_FromStringAndSize);
	REQ(PyObject_GetBuffer);
	REQ(PyBuffer_Release);
	REQ(PyTuple_Size);
	REQ(PyTuple_GetItem);
	REQ(PyTuple_SetItem);
	REQ(Py_IncRef);
	REQ(PyCFunction_NewEx);
	REQ(PyLong_FromUnsignedLongLong);
	REQ(PyLong_AsUnsignedLongLong);
	REQ(PyObject_SetAttr);
	REQ(PyObject_SetAttrString);
	REQ(PyUnicode_InternFromString);
	REQ(PyErr_SetString);
	REQ(PyErr_Occurred);
	REQ(PyExc_TypeError);
	REQ(PyExc_RuntimeError);
	*(void **)&api.NotImplemented = dlsym(lib, "_Py_NotImplementedStruct");
	if (api.NotImplemented == NULL) {
		missing = "_Py_NotImplementedStruct";
		goto fail;
	}
	*(void **)&api.True = dlsym(lib, "_Py_TrueStruct");
	*(void **)&api.False = dlsym(lib, "_Py_FalseStruct");
	if (api.True == NULL || api.False == NULL) {
		missing = "_Py_TrueStruct";
		goto fail;
	}
	REQ(PyLong_Type);
	REQ(PyFloat_Type);
	REQ(PyUnicode_Type);
	REQ(PyDict_Next);
	REQ(PyLong_AsLongAndOverflow);
	REQ(PyFloat_AsDouble);
	REQ(PyObject_CheckBuffer);
	REQ(PyList_Type);
	REQ(PyTuple_Type);
	REQ(PyList_Size);
	REQ(PyList_GetItem);
	REQ(PyBytes_AsString);
	REQ(PyErr_NoMemory);
#undef REQ
#undef OPT
	return 0;
fail : {
	char buf[256];
	snprintf(buf, sizeof buf, "missing symbol %s", missing);
	*err = strdup(buf);
	dlclose(lib);
	lib = NULL;
	return -2;
}
}

const char *spk_version(void) { return api.Py_GetVersion(); }

int spk_is_initialized(void) { return api.Py_IsInitialized(); }

int spk_has(const char *symbol) { return lib != NULL && dlsym(lib, symbol) != NULL; }

int spk_init(int minor, const char *home, const char *program, char **err) {
	if (minor >= 14) {
		const char *msg = NULL;
		PyInitConfig *c = api.PyInitConfig_Create();
		if (c == NULL) {
			*err = strdup("PyInitConfig_Create failed (out of memory)");
			return -1;
		}
		if (api.PyInitConfig_SetStr(c, "home", home) < 0 ||
		    (program[0] && api.PyInitConfig_SetStr(c, "program_name", program) < 0) ||
		    (program[0] && api.PyInitConfig_SetStr(c, "executable", program) < 0) ||
		    api.PyInitConfig_SetInt(c, "install_signal_handlers", 0) < 0 ||
		    api.PyInitConfig_SetInt(c, "use_environment", 0) < 0 ||
		    api.PyInitConfig_SetInt(c, "parse_argv", 0) < 0 ||
		    api.Py_InitializeFromInitConfig(c) < 0) {
			api.PyInitConfig_GetError(c, &msg);
			*err = strdup(msg ? msg : "initialisation failed");
			api.PyInitConfig_Free(c);
			return -1;
		}
		api.PyInitConfig_Free(c);
	} else {
		// The legacy API keeps pointers to these strings: they live forever.
		static wchar_t *whome, *wprog;
		if (api.Py_IgnoreEnvironmentFlag != NULL) {
			*api.Py_IgnoreEnvironmentFlag = 1;
		}
		whome = api.Py_DecodeLocale(home, NULL);
		if (whome == NULL) {
			*err = strdup("cannot decode the home path");
			return -1;
		}
		api.Py_SetPythonHome(whome);
		if (program[0]) {
			wprog = api.Py_DecodeLocale(program, NULL);
			if (wprog == NULL) {
				*err = strdup("cannot decode the program path");
				return -1;
			}
			api.Py_SetProgramName(wprog);
		}
		api.Py_InitializeEx(0);
		if (!api.Py_IsInitialized()) {
			*err = strdup("Py_InitializeEx failed");
			return -1;
		}
	}
	// The calling thread keeps the main thread state; release the GIL.
	api.PyEval_SaveThread();
	return 0;
}

PyThreadState *spk_new_main_tstate(void) { return api.PyThreadState_New(api.PyInterpreterState_Main()); }

// Creating an interpreter needs a current thread state: a temporary one of
// the main interpreter on this thread, deleted on this thread afterwards.
PyThreadState *spk_new_interp(int minor, int own_gil, char **err) {
	PyThreadState *mts = api.PyThreadState_New(api.PyInterpreterState_Main());
	PyThreadState *sub = NULL;
	if (mts == NULL) {
		*err = strdup("PyThreadState_New failed");
		return NULL;
	}
	api.PyEval_RestoreThread(mts);
	if (minor >= 12) {
		spk_PyInterpreterConfig cfg = {0, 0, 0, 1, 0, 1, own_gil ? 2 : 1};
		spk_PyStatus st = api.Py_NewInterpreterFromConfig(&sub, &cfg);
		if (st._type != 0) {
			char buf[512];
			snprintf(buf, sizeof buf, "%s%s%s", st.func ? st.func : "", st.func ? ": " : "",
			         st.err_msg ? st.err_msg : "Py_NewInterpreterFromConfig failed");
			*err = strdup(buf);
			sub = NULL;
		}
	} else {
		sub = api.Py_NewInterpreter();
		if (sub == NULL) {
			*err = strdup("Py_NewInterpreter failed");
		}
	}
	if (sub != NULL) {
		// sub is current now; release its GIL and switch back to mts.
		api.PyEval_SaveThread();
		api.PyEval_RestoreThread(mts);
	}
	api.PyThreadState_Clear(mts);
	api.PyThreadState_DeleteCurrent();
	// 3.11 binds a thread's GILState slot to the first thread state created
	// while it is empty: mts took it, and deleting it left it empty. Bind it
	// to sub, or PyGILState_Ensure on the home thread (pybind11 modules call
	// it in their init: scipy, hence sklearn) would create a main-interpreter
	// state and wait for the GIL this thread holds. 3.12+ bind sub when it
	// is activated.
	if (sub != NULL && minor <= 11 && api._PyThreadState_SetCurrent != NULL &&
	    api.PyGILState_GetThisThreadState() == NULL) {
		api._PyThreadState_SetCurrent(sub);
	}
	return sub;
}

void spk_end_interp(int minor, PyThreadState *ts) {
	PyThreadState *mts = NULL;
	if (minor <= 11) {
		// 3.11 returns from Py_EndInterpreter holding the (shared) GIL with
		// no current thread state: release it through a temporary one.
		mts = api.PyThreadState_New(api.PyInterpreterState_Main());
	}
	api.PyEval_RestoreThread(ts);
	api.Py_EndInterpreter(ts);
	if (mts != NULL) {
		api.PyThreadState_Swap(mts);
		api.PyThreadState_Clear(mts);
		api.PyThreadState_DeleteCurrent();
	}
}

PyThreadState *spk_new_tstate(PyThreadState *home) {
	return api.PyThreadState_New(api.PyThreadState_GetInterpreter(home));
}

void spk_delete_tstate(PyThreadState *ts) {
	api.PyEval_RestoreThread(ts);
	api.PyThreadState_Clear(ts);
	api.PyThreadState_DeleteCurrent();
	if (tls_ents != NULL) note_binding();
}

int64_t spk_interp_id(PyThreadState *ts) {
	return api.PyInterpreterState_GetID(api.PyThreadState_GetInterpreter(ts));
}

// ---- errors ----

static char *dup_utf8(PyObject *s) {
	Py_ssize_t n = 0;
	const char *p;
	char *out;
	if (s == NULL) {
		return NULL;
	}
	p = api.PyUnicode_AsUTF8AndSize(s, &n);
	if (p == NULL) {
		api.PyErr_Clear();
		return strdup("<unprintable>");
	}
	out = malloc(n + 1);
	if (out != NULL) {
		memcpy(out, p, n);
		out[n] = 0;
	}
	return out;
}

static char *str_of(PyObject *o) {
	PyObject *s = api.PyObject_Str(o);
	char *out;
	if (s == NULL) {
		api.PyErr_Clear();
		return strdup("<unprintable>");
	}
	out = dup_utf8(s);
	api.Py_DecRef(s);
	return out;
}

static char *attr_str(PyObject *o, const char *name) {
	PyObject *a = api.PyObject_GetAttrString(o, name);
	char *out;
	if (a == NULL) {
		api.PyErr_Clear();
		return NULL;
	}
	out = str_of(a);
	api.Py_DecRef(a);
	return out;
}

static char *type_name(PyObject *type) {
	char *mod = attr_str(type, "__module__");
	char *qual = attr_str(type, "__qualname__");
	char *out;
	if (qual == NULL) {
		free(mod);
		return strdup("<unknown exception>");
	}
	if (mod == NULL || strcmp(mod, "builtins") == 0) {
		free(mod);
		return qual;
	}
	out = malloc(strlen(mod) + strlen(qual) + 2);
	if (out != NULL) {
		sprintf(out, "%s.%s", mod, qual);
	}
	free(mod);
	free(qual);
	return out;
}

static char *format_tb(PyObject *t, PyObject *v, PyObject *tb) {
	PyObject *mod, *fn = NULL, *lst = NULL, *sep = NULL, *joined = NULL;
	char *out = NULL;
	mod = api.PyImport_ImportModule("traceback");
	if (mod != NULL) {
		fn = api.PyObject_GetAttrString(mod, "format_exception");
		api.Py_DecRef(mod);
	}
	if (fn != NULL) {
		lst = api.PyObject_CallFunctionObjArgs(fn, t, v ? v : api.None, tb ? tb : api.None, NULL);
		api.Py_DecRef(fn);
	}
	if (lst != NULL) {
		sep = api.PyUnicode_FromString("");
		if (sep != NULL) {
			joined = api.PyUnicode_Join(sep, lst);
			api.Py_DecRef(sep);
		}
		api.Py_DecRef(lst);
	}
	if (joined != NULL) {
		out = dup_utf8(joined);
		api.Py_DecRef(joined);
	}
	api.PyErr_Clear();
	return out;
}

// fetch_error moves the current Python exception into r.
static void fetch_error(spk_result *r) {
	PyObject *t = NULL, *v = NULL, *tb = NULL;
	api.PyErr_Fetch(&t, &v, &tb);
	if (t == NULL) {
		r->status = SPK_EINTERNAL;
		r->emsg = strdup("operation failed without setting a Python exception");
		return;
	}
	api.PyErr_NormalizeException(&t, &v, &tb);
	r->status = SPK_EPYTHON;
	r->etype = type_name(t);
	r->emsg = v ? str_of(v) : strdup("");
	r->etb = format_tb(t, v, tb);
	api.Py_DecRef(t);
	if (v) api.Py_DecRef(v);
	if (tb) api.Py_DecRef(tb);
	api.PyErr_Clear();
}

// describe_unmarshallable asks the interpreter's helper module which part
// of obj marshal cannot carry.
static void describe_unmarshallable(PyObject *obj, spk_result *r) {
	PyObject *t = NULL, *v = NULL, *tb = NULL, *mod, *fn = NULL, *desc = NULL;
	api.PyErr_Fetch(&t, &v, &tb);
	mod = api.PyImport_ImportModule("_snakepit_embed");
	if (mod != NULL) {
		fn = api.PyObject_GetAttrString(mod, "describe");
		api.Py_DecRef(mod);
	}
	if (fn != NULL) {
		desc = api.PyObject_CallFunctionObjArgs(fn, obj, NULL);
		api.Py_DecRef(fn);
	}
	// str_of calls into Python, which must not run with an exception set.
	api.PyErr_Clear();
	r->status = SPK_EUNSERIALIZABLE;
	if (desc != NULL && desc != api.None) {
		r->emsg = str_of(desc);
	} else {
		r->emsg = v ? str_of(v) : strdup("unmarshallable object");
	}
	if (desc) api.Py_DecRef(desc);
	if (t) api.Py_DecRef(t);
	if (v) api.Py_DecRef(v);
	if (tb) api.Py_DecRef(tb);
	api.PyErr_Clear();
}

// copy_out copies n bytes of result into buf, or into malloc'd memory if
// they do not fit.
static void copy_out(const char *p, Py_ssize_t n, char *buf, Py_ssize_t cap, spk_result *r) {
	if (n <= cap) {
		memcpy(buf, p, n);
		r->out_len = n;
	} else if ((r->out = malloc(n)) == NULL) {
		r->status = SPK_EINTERNAL;
		r->emsg = strdup("out of memory copying the result");
	} else {
		memcpy(r->out, p, n);
		r->out_len = n;
		r->out_heap = 1;
	}
}

// spk_held is what spk_fcall keeps for spk_release_held: the result's
// buffer, and the call's payload views (released after it, as the result
// may be one of them).
typedef struct {
	spk_Py_buffer view;
	PyObject **views;
	int nviews;
	unsigned char *retained;
} spk_held;

// put_raw_bytes writes marshal's encoding of the bytes of view v (a
// C-contiguous memoryview) to buf, or to malloc'd memory if it is larger.
static void put_raw_bytes(PyObject *v, char *buf, Py_ssize_t cap, int hold, spk_result *r) {
	spk_Py_buffer view;
	if (api.PyObject_GetBuffer(v, &view, SPK_PyBUF_SIMPLE) < 0) {
		fetch_error(r);
		return;
	}
	if (hold && view.len + 5 > cap && view.len <= 0x7fffffff) {
		// Too large for buf: rather than copy it to the C heap, keep the
		// buffer for the caller to copy straight into its own memory.
		spk_held *h = calloc(1, sizeof *h);
		if (h != NULL) {
			h->view = view;
			r->held = h;
			r->out = view.buf;
			r->out_len = view.len;
			r->out_raw = 2;
			return;
		}
	}
	Py_ssize_t n = view.len + 5;
	char *out = buf;
	if (view.len > 0x7fffffff) {
		r->status = SPK_EUNSERIALIZABLE;
		r->emsg = strdup("a bytes result of 2 GiB or more");
	} else if (n > cap && (out = malloc(n)) == NULL) {
		r->status = SPK_EINTERNAL;
		r->emsg = strdup("out of memory copying the result");
	} else {
		uint32_t len = (uint32_t)view.len;
		out[0] = 's';
		memcpy(out + 1, &len, 4); // little-endian hosts only (as marshal's own)
		memcpy(out + 5, view.buf, view.len);
		r->out_len = n;
		if (out != buf) {
			r->out = out;
			r->out_heap = 1;
		}
		r->out_raw = 1;
	}
	api.PyBuffer_Release(&view);
}

// put_result marshals res into buf, or into malloc'd memory if it is larger
// (hold: see put_raw_bytes).
static void put_result(PyObject *res, char *buf, Py_ssize_t cap, int hold, spk_result *r) {
	PyObject *b;
	char *p = NULL;
	Py_ssize_t n = 0;
	if (res == api.None && cap >= 1) {
		buf[0] = 'N';
		r->out_len = 1;
		return;
	}
	// A bytes result is copied as it is (the caller adds marshal's header):
	// the dispatcher's replies are bytes, and this saves a copy.
	PyObject *type = api.PyObject_Type(res);
	api.Py_DecRef(type);
	if (type == api.PyBytes_Type && api.PyBytes_AsStringAndSize(res, &p, &n) == 0) {
		r->out_raw = 1;
		copy_out(p, n, buf, cap, r);
		return;
	}
	// A memoryview reply is a large bytes-like result (the dispatcher's
	// raw_results): marshalled here as bytes, with one copy.
	if (type == api.PyMemoryView_Type) {
		put_raw_bytes(res, buf, cap, hold, r);
		return;
	}
	b = api.PyMarshal_WriteObjectToString(res, 4);
	if (b == NULL) {
		if (api.PyErr_ExceptionMatches(*api.PyExc_ValueError)) {
			describe_unmarshallable(res, r);
		} else {
			fetch_error(r);
		}
		return;
	}
	if (api.PyBytes_AsStringAndSize(b, &p, &n) < 0) {
		fetch_error(r);
	} else {
		copy_out(p, n, buf, cap, r);
	}
	api.Py_DecRef(b);
}

static void reset(spk_result *r) { memset(r, 0, sizeof *r); }

// ---- operations ----

// leave releases the GIL after an operation with a thread state that is not
// a cached one (a home thread's, an attached Thread's): activating it moved
// this thread's GILState binding off any cached one (see note_binding).
static void leave(void) {
	api.PyEval_SaveThread();
	if (tls_ents != NULL) note_binding();
}

void spk_exec(PyThreadState *ts, const char *code, int eval, char *buf, Py_ssize_t cap, spk_result *r) {
	PyObject *mainmod, *globals, *res;
	reset(r);
	api.PyEval_RestoreThread(ts);
	mainmod = api.PyImport_AddModule("__main__");
	if (mainmod == NULL) {
		fetch_error(r);
		goto out;
	}
	globals = api.PyModule_GetDict(mainmod);
	res = api.PyRun_StringFlags(code, eval ? Py_eval_input : Py_file_input, globals, globals, NULL);
	if (res == NULL) {
		fetch_error(r);
		goto out;
	}
	if (eval) {
		put_result(res, buf, cap, 0, r);
	}
	api.Py_DecRef(res);
out:
	leave();
}

PyObject *spk_lookup(PyThreadState *ts, const char *module, const char *attr, spk_result *r) {
	PyObject *mod, *obj = NULL;
	reset(r);
	api.PyEval_RestoreThread(ts);
	mod = api.PyImport_ImportModule(module);
	if (mod == NULL) {
		fetch_error(r);
	} else if (attr[0] == 0) {
		obj = mod;
	} else {
		obj = api.PyObject_GetAttrString(mod, attr);
		if (obj == NULL) {
			fetch_error(r);
		}
		api.Py_DecRef(mod);
	}
	leave();
	return obj;
}

// do_call runs fn(*args, **kwargs) with the GIL held and puts the result.
// host_payloads returns t with its last item replaced by a tuple of the
// call's out-of-band payloads: read-only memoryviews of the host's memory
// (3.12+), or bytes copies (3.11, where Python code cannot export a buffer
// and so cannot stop a view from outliving the call).
static PyObject *host_payloads(PyObject *t, const spk_buf *bufs, int nbufs, PyObject **views) {
	Py_ssize_t n = api.PyTuple_Size(t);
	PyObject *bt = NULL, *nt = NULL;
	if (n < 1 || (bt = api.PyTuple_New(nbufs)) == NULL) goto fail;
	for (int i = 0; i < nbufs; i++) {
		char *p = bufs[i].ptr ? bufs[i].ptr : (char *)"";
		PyObject *v = py_minor >= 12 ? api.PyMemoryView_FromMemory(p, bufs[i].len, SPK_PyBUF_READ)
		                              : api.PyBytes_FromStringAndSize(p, bufs[i].len);
		if (v == NULL) goto fail;
		if (py_minor >= 12) {
			api.Py_IncRef(v);
			views[i] = v;
		}
		api.PyTuple_SetItem(bt, i, v);
	}
	if ((nt = api.PyTuple_New(n)) == NULL) goto fail;
	for (Py_ssize_t i = 0; i < n - 1; i++) {
		PyObject *x = api.PyTuple_GetItem(t, i);
		api.Py_IncRef(x);
		api.PyTuple_SetItem(nt, i, x);
	}
	api.PyTuple_SetItem(nt, n - 1, bt);
	return nt;
fail:
	if (bt) api.Py_DecRef(bt);
	return NULL;
}

// release_payloads ends the memoryviews of host memory a call made. One
// that is still exported (a view the handler kept past its call) is marked
// retained: its memory must stay valid until the interpreter ends.
static void release_payloads(PyObject **views, int nbufs, unsigned char *retained) {
	for (int i = 0; i < nbufs; i++) {
		if (views[i] == NULL) continue;
		PyObject *m = api.PyObject_GetAttrString(views[i], "release");
		PyObject *ok = m ? api.PyObject_CallFunctionObjArgs(m, NULL) : NULL;
		if (ok == NULL) {
			retained[i] = 1;
			api.PyErr_Clear();
		} else {
			api.Py_DecRef(ok);
		}
		if (m) api.Py_DecRef(m);
		api.Py_DecRef(views[i]);
		views[i] = NULL;
	}
}

static void do_call(PyObject *fn, const char *args, Py_ssize_t alen, const char *kwargs, Py_ssize_t klen,
                    const spk_buf *bufs, int nbufs, unsigned char *retained, int hold,
                    char *buf, Py_ssize_t cap, spk_result *r) {
	PyObject *views_small[8] = {0};
	PyObject **views = views_small;
	PyObject *a = NULL, *t = NULL, *kw = NULL, *res;
	if (alen > 0) {
		a = api.PyMarshal_ReadObjectFromString(args, alen);
		if (a == NULL) {
			fetch_error(r);
			goto out;
		}
		t = api.PySequence_Tuple(a);
	} else {
		t = api.PyTuple_New(0);
	}
	if (t == NULL) {
		fetch_error(r);
		goto out;
	}
	if (nbufs > 0) {
		if (nbufs > 8 && (views = calloc(nbufs, sizeof *views)) == NULL) {
			views = views_small;
			r->status = SPK_EINTERNAL;
			r->emsg = strdup("out of memory");
			goto out;
		}
		PyObject *nt = host_payloads(t, bufs, nbufs, views);
		if (nt == NULL) {
			fetch_error(r);
			goto out;
		}
		api.Py_DecRef(t);
		t = nt;
	}
	if (klen > 0) {
		kw = api.PyMarshal_ReadObjectFromString(kwargs, klen);
		if (kw == NULL) {
			fetch_error(r);
			goto out;
		}
		// PyObject_Call requires a dict (or NULL) and does not check it.
		PyObject *kt = api.PyObject_Type(kw);
		api.Py_DecRef(kt); // the type outlives kw
		if (kt != api.PyDict_Type) {
			r->status = SPK_EBADARGS;
			r->emsg = strdup("keyword arguments must be a marshalled dict");
			goto out;
		}
	}
	res = api.PyObject_Call(fn, t, kw);
	if (res == NULL) {
		fetch_error(r);
		goto out;
	}
	put_result(res, buf, cap, hold, r);
	api.Py_DecRef(res);
out:
	if (a) api.Py_DecRef(a);
	if (t) api.Py_DecRef(t);
	if (kw) api.Py_DecRef(kw);
	if (nbufs > 0) {
		spk_held *h = r->held;
		if (h != NULL && (h->views = malloc(nbufs * sizeof *views)) != NULL) {
			// The held result may be one of them: release them after it.
			memcpy(h->views, views, nbufs * sizeof *views);
			h->nviews = nbufs;
			h->retained = retained;
		} else {
			release_payloads(views, nbufs, retained); // after the reply, which may view them
		}
		if (views != views_small) free(views);
	}
}

void spk_call(PyThreadState *ts, PyObject *fn, const char *args, Py_ssize_t alen,
              const char *kwargs, Py_ssize_t klen, char *buf, Py_ssize_t cap, spk_result *r) {
	reset(r);
	api.PyEval_RestoreThread(ts);
	do_call(fn, args, alen, kwargs, klen, NULL, 0, NULL, 0, buf, cap, r);
	leave();
}

void spk_decref(PyThreadState *ts, PyObject **objs, int n) {
	api.PyEval_RestoreThread(ts);
	for (int i = 0; i < n; i++) {
		api.Py_DecRef(objs[i]);
	}
	leave();
}

void spk_result_free(spk_result *r) {
	if (r->out_heap) free(r->out);
	free(r->etype);
	free(r->emsg);
	free(r->etb);
	reset(r);
}

// ---- cached per-thread thread states ----
//
// A thread that calls an interpreter with spk_fcall keeps a thread state of
// it (an entry) for its next calls. CPython binds each OS thread's
// "GILState" slot to one thread state: the one it activated last (3.12+), or
// the first one it created (3.11). The bound one may only be deleted by its
// own thread, as deleting it from another would leave the slot dangling.
// Any other entry of a thread that is not inside a call with it may be
// deleted by any thread holding its interpreter's GIL: each entry's state
// says which it is, and who owns it at the moment.

enum {
	ENT_IDLE_UNBOUND, // not in use, not bound: any thread may reap it
	ENT_IDLE_BOUND,   // not in use, bound: only its thread deletes it
	ENT_INUSE,        // its thread calls with it or deletes it
	ENT_REAPING,      // another thread deletes its thread state
	ENT_REAPED,       // thread state deleted; its thread frees the entry
	ENT_ORPHANED,     // being reaped, and its thread has exited: the reaper frees it
};

// spk_thread counts, for one OS thread, the entries other threads reaped
// and it has not freed yet. Entries and the thread each hold a reference.
typedef struct spk_thread {
	atomic_int reaped;
	atomic_int refs;
} spk_thread;

static void th_unref(spk_thread *th) {
	if (atomic_fetch_sub(&th->refs, 1) == 1) free(th);
}

typedef struct spk_tsent {
	spk_interp *owner; // not to be dereferenced once the entry is reaped
	PyThreadState *ts;
	pid_t tid;
	unsigned long ident;              // PyThread_get_thread_ident() == pthread_self()
	uint64_t seq;                     // the running call, 0 when idle; written under the GIL
	int interrupted;                  // an async exception was set for the running call
	int held;                         // the running call takes no interrupt (hold_interrupt)
	atomic_int state;                 // ENT_*
	spk_thread *th;                   // its thread's counters
	struct spk_tsent *next_reaped;    // a reaper's batch
	struct spk_tsent *next_in_interp; // owner's list, guarded by owner->mu
	struct spk_tsent *next_in_thread; // the thread's own list
} spk_tsent;

struct spk_interp {
	PyThreadState *home;
	PyInterpreterState *interp;
	pthread_mutex_t mu; // guards ents, n
	spk_tsent *ents;
	int n;
	atomic_int closing;
	// spk_interp_tag_calls: an object whose attribute tag_name spk_fcall
	// sets to the call's seq. References owned by the caller.
	PyObject *tag_obj;
	PyObject *tag_name;
};

static atomic_int doomed;  // thread states of closing interpreters not yet deleted
static __thread spk_thread *tls_th; // this thread's counters, once it has an entry
static pthread_key_t exit_key;
static int exit_key_ok;
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;
static __thread PyThreadState *tls_anchor; // see spk_release_thread
static PyInterpreterState *anchor_interp;  // see spk_anchor_init

spk_interp *spk_interp_new(PyThreadState *home) {
	spk_interp *in = calloc(1, sizeof *in);
	if (in == NULL) return NULL;
	in->home = home;
	in->interp = api.PyThreadState_GetInterpreter(home);
	pthread_mutex_init(&in->mu, NULL);
	return in;
}

void spk_interp_free(spk_interp *in) {
	pthread_mutex_destroy(&in->mu);
	free(in);
}

// note_binding marks this thread's idle entries that CPython's GILState slot
// no longer names as reapable. (An entry only becomes bound while in use:
// when its thread state is created or activated.)
static void note_binding(void) {
	PyThreadState *b = api.PyGILState_GetThisThreadState();
	for (spk_tsent *e = tls_ents; e; e = e->next_in_thread) {
		int s = ENT_IDLE_BOUND;
		if (e->ts != b) atomic_compare_exchange_strong(&e->state, &s, ENT_IDLE_UNBOUND);
	}
}

// put_down ends this thread's use of e.
static void put_down(spk_tsent *e) {
	int bound = e->ts == api.PyGILState_GetThisThreadState();
	atomic_store(&e->state, bound ? ENT_IDLE_BOUND : ENT_IDLE_UNBOUND);
}

static void unlink_from_owner(spk_tsent *e) {
	spk_interp *in = e->owner;
	pthread_mutex_lock(&in->mu);
	for (spk_tsent **p = &in->ents; *p; p = &(*p)->next_in_interp) {
		if (*p == e) {
			*p = e->next_in_interp;
			in->n--;
			// Counted in doomed exactly when it was listed at close time.
			if (atomic_load(&in->closing)) atomic_fetch_sub(&doomed, 1);
			break;
		}
	}
	pthread_mutex_unlock(&in->mu);
}

// drop_from_thread unlinks a reaped entry from this thread's list and
// frees it.
static void drop_from_thread(spk_tsent **p) {
	spk_tsent *e = *p;
	spk_thread *th = e->th;
	*p = e->next_in_thread;
	free(e);
	atomic_fetch_sub(&th->reaped, 1);
	th_unref(th);
}

// delete_own deletes e, which this thread holds in use, on this thread.
static void delete_own(spk_tsent *e) {
	api.PyEval_RestoreThread(e->ts);
	api.PyThreadState_Clear(e->ts);
	api.PyThreadState_DeleteCurrent();
	unlink_from_owner(e);
	th_unref(e->th); // not the last reference: the thread holds one
	free(e);
}

enum {
	SWEEP_CLOSING, // entries of closing interpreters
	SWEEP_ALL,     // every entry not in use
};

// sweep deletes this thread's entries that which names and frees entries
// other threads reaped.
static void sweep(int which) {
	if (tls_ents == NULL) return;
	for (spk_tsent **p = &tls_ents; *p;) {
		spk_tsent *e = *p;
		int s = atomic_load(&e->state);
		if (s == ENT_REAPED) {
			drop_from_thread(p);
			continue;
		}
		if (s != ENT_IDLE_BOUND && s != ENT_IDLE_UNBOUND) { // being reaped
			p = &e->next_in_thread;
			continue;
		}
		// Take it first: a taken entry cannot be reaped, so its owner
		// stays alive while this thread looks at it.
		if (!atomic_compare_exchange_strong(&e->state, &s, ENT_INUSE)) {
			continue; // taken by a reaper just now: look again
		}
		if (which != SWEEP_ALL && !atomic_load(&e->owner->closing)) {
			put_down(e);
			p = &e->next_in_thread;
			continue;
		}
		*p = e->next_in_thread;
		delete_own(e);
	}
	if (tls_ents != NULL) note_binding();
}

void spk_sweep_thread(void) { sweep(SWEEP_CLOSING); }

// spk_release_thread leaves this thread with no entry only it can delete.
// On 3.12+ it keeps the entries of live interpreters (deleting one would
// wait for that interpreter's GIL, which a busy one may hold for long) and
// moves the binding off them by activating, for a moment, a thread state it
// keeps for that, of an interpreter that runs no code (spk_anchor_init): its
// GIL is only ever taken for that moment. On 3.11, where activating does
// not move the binding, it deletes every entry (all interpreters share the
// one GIL there: the wait is what any call costs).
void spk_release_thread(void) {
	if (tls_ents == NULL) return; // nothing cached (also: libpython may not be loaded)
	sweep(py_minor < 12 ? SWEEP_ALL : SWEEP_CLOSING);
	if (py_minor < 12) return;
	PyThreadState *b = api.PyGILState_GetThisThreadState();
	int bound = 0;
	for (spk_tsent *e = tls_ents; e; e = e->next_in_thread) {
		if (e->ts == b && atomic_load(&e->state) == ENT_IDLE_BOUND) bound = 1;
	}
	if (!bound) return;
	if (tls_anchor == NULL) {
		tls_anchor = api.PyThreadState_New(anchor_interp ? anchor_interp : api.PyInterpreterState_Main());
	}
	if (tls_anchor == NULL) return;
	api.PyEval_RestoreThread(tls_anchor);
	api.PyEval_SaveThread();
	note_binding();
}

int spk_anchor_init(char **err) {
	if (py_minor < 12) return 0;
	PyThreadState *sub = spk_new_interp(py_minor, 1, err);
	if (sub == NULL) return -1;
	anchor_interp = api.PyThreadState_GetInterpreter(sub);
	api.PyEval_RestoreThread(sub);
	api.PyThreadState_Clear(sub);
	api.PyThreadState_DeleteCurrent();
	return 0;
}

// at_thread_exit deletes a thread's entries (and anchor) on that thread as
// it exits: Go ends a thread whose goroutine exits while locked to it.
static void at_thread_exit(void *unused) {
	(void)unused;
	while (tls_ents != NULL) {
		spk_tsent *e = tls_ents;
		int s = atomic_load(&e->state);
		if (s == ENT_REAPED) {
			drop_from_thread(&tls_ents);
			continue;
		}
		if (s == ENT_REAPING) {
			// A reaper deletes its thread state (it may wait long for the
			// GIL): leave the entry to it.
			if (atomic_compare_exchange_strong(&e->state, &s, ENT_ORPHANED)) {
				tls_ents = e->next_in_thread;
			}
			continue;
		}
		if (!atomic_compare_exchange_strong(&e->state, &s, ENT_INUSE)) continue;
		tls_ents = e->next_in_thread;
		delete_own(e);
	}
	if (tls_th != NULL) {
		th_unref(tls_th);
		tls_th = NULL;
	}
	if (tls_anchor != NULL) {
		api.PyEval_RestoreThread(tls_anchor);
		api.PyThreadState_Clear(tls_anchor);
		api.PyThreadState_DeleteCurrent();
		tls_anchor = NULL;
	}
}

static void make_exit_key(void) { exit_key_ok = pthread_key_create(&exit_key, at_thread_exit) == 0; }

// drop_others deletes this thread's idle entries (3.11), so that the entry
// it creates next binds its GILState slot. On 3.11 the slot names the first
// thread state a thread creates while it is empty, and PyGILState_Ensure
// (which pybind11 modules call, in their init and when they call back into
// Python) uses the slot's thread state: naming another interpreter's, it
// waits for the GIL its own thread holds (3.11 interpreters share one), for
// ever. A thread switching interpreters thus pays a delete and a create
// instead.
static void drop_others(void) { sweep(SWEEP_ALL); }

// take_entry returns this thread's entry for in, in use, creating it on
// first use; NULL if in is closing (or out of memory).
static spk_tsent *take_entry(spk_interp *in) {
	spk_tsent *prev = NULL;
	for (spk_tsent **p = &tls_ents; *p;) {
		spk_tsent *e = *p;
		int s = atomic_load(&e->state);
		if (s == ENT_REAPED) {
			drop_from_thread(p);
			continue;
		}
		if (e->owner != in) {
			prev = e;
			p = &e->next_in_thread;
			continue;
		}
		if ((s != ENT_IDLE_BOUND && s != ENT_IDLE_UNBOUND) ||
		    !atomic_compare_exchange_strong(&e->state, &s, ENT_INUSE)) {
			return NULL; // reaped: in is closing
		}
		if (prev != NULL) { // move to front: callers tend to repeat
			prev->next_in_thread = e->next_in_thread;
			e->next_in_thread = tls_ents;
			tls_ents = e;
		}
		return e;
	}
	if (py_minor < 12) drop_others();
	if (tls_th == NULL) {
		tls_th = calloc(1, sizeof *tls_th);
		if (tls_th == NULL) return NULL;
		atomic_init(&tls_th->refs, 1); // the thread's own
		pthread_once(&exit_once, make_exit_key);
		if (exit_key_ok) pthread_setspecific(exit_key, (void *)1);
	}
	spk_tsent *e = calloc(1, sizeof *e);
	if (e == NULL) return NULL;
	atomic_init(&e->state, ENT_INUSE);
	e->th = tls_th;
	pthread_mutex_lock(&in->mu);
	if (atomic_load(&in->closing)) {
		pthread_mutex_unlock(&in->mu);
		free(e);
		return NULL;
	}
	e->ts = api.PyThreadState_New(in->interp);
	if (e->ts == NULL) {
		pthread_mutex_unlock(&in->mu);
		free(e);
		return NULL;
	}
	e->owner = in;
	e->tid = (pid_t)syscall(SYS_gettid);
	e->ident = (unsigned long)pthread_self();
	e->next_in_interp = in->ents;
	in->ents = e;
	in->n++;
	pthread_mutex_unlock(&in->mu);
	atomic_fetch_add(&tls_th->refs, 1);
	e->next_in_thread = tls_ents;
	tls_ents = e;
	return e;
}

void spk_interp_tag_calls(spk_interp *in, PyObject *obj, PyObject *name) {
	in->tag_obj = obj;
	in->tag_name = name;
}

// tag_call sets in's tag attribute to seq (with the GIL). Returns 0, with
// the error in r, if it failed.
static int tag_call(spk_interp *in, uint64_t seq, spk_result *r) {
	PyObject *v = api.PyLong_FromUnsignedLongLong(seq);
	if (v == NULL || api.PyObject_SetAttr(in->tag_obj, in->tag_name, v) < 0) {
		if (v != NULL) api.Py_DecRef(v);
		fetch_error(r);
		return 0;
	}
	api.Py_DecRef(v);
	return 1;
}

void spk_fcall(spk_interp *in, uint64_t seq, PyObject *fn, const char *args, Py_ssize_t alen,
               const char *kwargs, Py_ssize_t klen, const spk_buf *bufs, int nbufs, unsigned char *retained,
               char *buf, Py_ssize_t cap, spk_result *r) {
	spk_tsent *e;
	if (atomic_load_explicit(&doomed, memory_order_relaxed) != 0 ||
	    (tls_th != NULL && atomic_load_explicit(&tls_th->reaped, memory_order_relaxed) != 0)) {
		spk_sweep_thread();
	}
	if (atomic_load_explicit(&in->closing, memory_order_relaxed) || (e = take_entry(in)) == NULL) {
		reset(r);
		r->status = atomic_load(&in->closing) ? SPK_ECLOSED : SPK_EINTERNAL;
		r->emsg = strdup(r->status == SPK_ECLOSED ? "interpreter closed" : "cannot create a thread state");
		return;
	}
	// seq is written under the GIL, as spk_interrupt reads it.
	reset(r);
	api.PyEval_RestoreThread(e->ts);
	// Activating e moved the binding off another entry: that one can be
	// reaped during this call already, however long it runs.
	if (tls_ents->next_in_thread != NULL) note_binding();
	e->seq = seq;
	e->held = 0;
	if (in->tag_obj == NULL || tag_call(in, seq, r)) {
		do_call(fn, args, alen, kwargs, klen, bufs, nbufs, retained, 1, buf, cap, r);
	}
	e->seq = 0;
	if (e->interrupted) {
		// The interrupt came too late to be raised: drop it, or it would hit
		// the next call on this thread.
		api.PyThreadState_SetAsyncExc(e->ident, NULL);
		e->interrupted = 0;
	}
	api.PyEval_SaveThread();
	if (r->held != NULL) {
		r->held_entry = e; // stays in use until spk_release_held
		return;
	}
	put_down(e);
	// An interpreter may have started closing during the call: give up
	// this thread's states of it now rather than when it next calls.
	if (atomic_load_explicit(&doomed, memory_order_relaxed) != 0) {
		spk_sweep_thread();
	}
}

void spk_release_held(spk_result *r) {
	spk_held *h = r->held;
	spk_tsent *e = r->held_entry;
	if (h == NULL) return;
	api.PyEval_RestoreThread(e->ts);
	api.PyBuffer_Release(&h->view);
	if (h->views != NULL) {
		release_payloads(h->views, h->nviews, h->retained);
		free(h->views);
	}
	api.PyEval_SaveThread();
	free(h);
	r->held = NULL;
	r->held_entry = NULL;
	r->out = NULL;
	r->out_len = 0;
	put_down(e);
	if (atomic_load_explicit(&doomed, memory_order_relaxed) != 0) {
		spk_sweep_thread();
	}
}

int spk_interrupt(spk_interp *in, uint64_t seq, PyObject *exc) {
	int done = 0;
	api.PyEval_RestoreThread(in->home);
	pthread_mutex_lock(&in->mu);
	for (spk_tsent *e = in->ents; e; e = e->next_in_interp) {
		if (e->seq == seq) {
			if (e->held) {
				done = 1; // the handler stops by itself (hold_interrupt)
			} else if (api.PyThreadState_SetAsyncExc(e->ident, exc) > 0) {
				e->interrupted = 1;
				done = 1;
			}
			break;
		}
	}
	pthread_mutex_unlock(&in->mu);
	leave();
	return done;
}

void spk_interp_close(spk_interp *in) {
	pthread_mutex_lock(&in->mu);
	if (!atomic_exchange(&in->closing, 1)) {
		atomic_fetch_add(&doomed, in->n);
	}
	pthread_mutex_unlock(&in->mu);
	spk_sweep_thread(); // this thread's own, if any
}

int spk_interp_pending(spk_interp *in, pid_t *tids, int max) {
	int n, i = 0;
	pthread_mutex_lock(&in->mu);
	n = in->n;
	for (spk_tsent *e = in->ents; e && i < max; e = e->next_in_interp) {
		tids[i++] = e->tid;
	}
	pthread_mutex_unlock(&in->mu);
	return n;
}

typedef struct {
	spk_interp *in;
	const pid_t *dead;
	int ndead;
	int reaped;
} reap_job;

static int is_dead(const reap_job *j, pid_t tid) {
	for (int i = 0; i < j->ndead; i++) {
		if (j->dead[i] == tid) return 1;
	}
	return 0;
}

// reap_main runs on a thread of its own, so that no thread's GILState slot
// is touched but its own (which ends with it).
static void *reap_main(void *arg) {
	reap_job *j = arg;
	spk_interp *in = j->in;
	spk_tsent *batch = NULL;
	pthread_mutex_lock(&in->mu);
	for (spk_tsent *e = in->ents; e; e = e->next_in_interp) {
		int s = atomic_load(&e->state);
		int ok = s == ENT_IDLE_UNBOUND || (s == ENT_IDLE_BOUND && is_dead(j, e->tid));
		if (ok && atomic_compare_exchange_strong(&e->state, &s, ENT_REAPING)) {
			e->next_reaped = batch;
			batch = e;
		}
	}
	pthread_mutex_unlock(&in->mu);
	if (batch == NULL) return NULL;
	PyThreadState *tmp = api.PyThreadState_New(in->interp);
	if (tmp == NULL) {
		for (spk_tsent *e = batch; e; e = e->next_reaped) {
			atomic_store(&e->state, ENT_IDLE_UNBOUND);
		}
		return NULL;
	}
	api.PyEval_RestoreThread(tmp);
	for (spk_tsent *e = batch; e; e = e->next_reaped) {
		api.PyThreadState_Clear(e->ts);
		api.PyThreadState_Delete(e->ts);
		j->reaped++;
	}
	api.PyThreadState_Clear(tmp);
	api.PyThreadState_DeleteCurrent();
	// Only now, with no thread state of in left on this thread, may Close
	// see nothing pending and end in.
	for (spk_tsent *e = batch, *next; e; e = next) {
		next = e->next_reaped;
		unlink_from_owner(e);
		spk_thread *th = e->th;
		if (is_dead(j, e->tid)) {
			free(e); // its thread, and the thread's list, are gone
			th_unref(th);
			continue;
		}
		atomic_fetch_add(&th->reaped, 1); // before its thread may free e
		int s = ENT_REAPING;
		if (!atomic_compare_exchange_strong(&e->state, &s, ENT_REAPED)) {
			// ENT_ORPHANED: its thread exited meanwhile.
			atomic_fetch_sub(&th->reaped, 1);
			free(e);
			th_unref(th);
		}
	}
	return NULL;
}

int spk_reap(spk_interp *in, const pid_t *dead, int ndead) {
	reap_job j = {in, dead, ndead, 0};
	pthread_t t;
	if (pthread_create(&t, NULL, reap_main, &j) != 0) return -1;
	pthread_join(t, NULL);
	return j.reaped;
}

// ---- host calls: Python calls Go ----

// PyMethodDef, whose layout is part of the stable ABI.
typedef struct {
	const char *ml_name;
	void *ml_meth;
	int ml_flags;
	const char *ml_doc;
} spk_PyMethodDef;

#define SPK_METH_FASTCALL 0x0080

// kw_out is the marshal encoder of a host call's keyword arguments: it
// writes into the caller's buffer, then into malloc'd memory when that is
// full, and keeps the buffer exports of the values it passes out of band.
#define KW_SMALL_VIEWS 4
#define KW_MAX_DEPTH 100
enum { KW_OK = 0, KW_FALLBACK = -1, KW_ERROR = -2 };

typedef struct {
	char *base, *p, *end;
	int heap; // base is malloc'd
	int depth;
	// The exports of out-of-band values, held until Go returns, and their
	// spans: nviews of them, room for vcap. A Py_buffer never moves once
	// filled (an exporter may point its shape into it): views holds
	// pointers, to views_small and then to malloc'd ones.
	spk_Py_buffer **views;
	spk_buf *bufs;
	int nviews, vcap;
	spk_Py_buffer *views_ptrs[KW_SMALL_VIEWS];
	spk_Py_buffer views_small[KW_SMALL_VIEWS];
	spk_buf bufs_small[KW_SMALL_VIEWS];
} kw_out;

static void kw_init(kw_out *o, char *buf, size_t cap) {
	o->base = o->p = buf;
	o->end = buf + cap;
	o->heap = 0;
	o->depth = 0;
	for (int i = 0; i < KW_SMALL_VIEWS; i++) o->views_ptrs[i] = &o->views_small[i];
	o->views = o->views_ptrs;
	o->bufs = o->bufs_small;
	o->nviews = 0;
	o->vcap = KW_SMALL_VIEWS;
}

// kw_free releases what o holds (with the GIL).
static void kw_free(kw_out *o) {
	for (int i = 0; i < o->nviews; i++) api.PyBuffer_Release(o->views[i]);
	o->nviews = 0;
	if (o->views != o->views_ptrs) {
		for (int i = KW_SMALL_VIEWS; i < o->vcap; i++) free(o->views[i]);
		free(o->views);
	}
	if (o->bufs != o->bufs_small) free(o->bufs);
	o->views = o->views_ptrs;
	o->vcap = KW_SMALL_VIEWS;
	o->bufs = o->bufs_small;
	if (o->heap) free(o->base);
	o->heap = 0;
	o->base = o->p = o->end = NULL;
}

// kw_grow makes room for n more bytes.
static int kw_grow(kw_out *o, size_t n) {
	size_t used = (size_t)(o->p - o->base), cap = (size_t)(o->end - o->base) * 2;
	char *nb;
	if (cap < used + n) cap = used + n;
	if ((nb = malloc(cap)) == NULL) {
		api.PyErr_NoMemory();
		return KW_ERROR;
	}
	memcpy(nb, o->base, used);
	if (o->heap) free(o->base);
	o->base = nb;
	o->p = nb + used;
	o->end = nb + cap;
	o->heap = 1;
	return KW_OK;
}

// kw_put_grow is kw_put when the bytes do not fit.
static int kw_put_grow(kw_out *o, const void *b, size_t n) {
	if (kw_grow(o, n) < 0) return KW_ERROR;
	memcpy(o->p, b, n);
	o->p += n;
	return KW_OK;
}

static inline int kw_put(kw_out *o, const void *b, size_t n) {
	if ((size_t)(o->end - o->p) < n) return kw_put_grow(o, b, n);
	memcpy(o->p, b, n);
	o->p += n;
	return KW_OK;
}

// kw_code_len writes a type code and a 32-bit length (or count).
static inline int kw_code_len(kw_out *o, char code, Py_ssize_t n) {
	unsigned char h[5];
	if (n < 0 || n > 0x7fffffff) return KW_FALLBACK;
	h[0] = (unsigned char)code;
	h[1] = (unsigned char)n;
	h[2] = (unsigned char)(n >> 8);
	h[3] = (unsigned char)(n >> 16);
	h[4] = (unsigned char)(n >> 24);
	return kw_put(o, h, 5);
}

// kw_short writes a short ASCII str (fewer than 256 bytes).
static int kw_short(kw_out *o, const char *s, size_t n) {
	unsigned char h[2] = {'z', (unsigned char)n};
	int rc = kw_put(o, h, 2);
	return rc != KW_OK ? rc : kw_put(o, s, n);
}

// kw_marker starts a marker tuple of n items: MarkerTag (pymarshal), kind.
static int kw_marker(kw_out *o, const char *kind, int n) {
	unsigned char h[2] = {')', (unsigned char)n};
	int rc = kw_put(o, h, 2);
	if (rc == KW_OK) rc = kw_short(o, "\0snakepit", 9);
	if (rc == KW_OK) rc = kw_short(o, kind, strlen(kind));
	return rc;
}

// kw_splice writes v as marshal.dumps(v, 2) does: version 2 has no
// back-references, so its output stands alone anywhere in the stream.
// KW_FALLBACK when marshal refuses v (ValueError).
static int kw_splice(kw_out *o, PyObject *v) {
	char *p;
	Py_ssize_t n;
	int rc;
	PyObject *b = api.PyMarshal_WriteObjectToString(v, 2);
	if (b == NULL) {
		if (!api.PyErr_ExceptionMatches(*api.PyExc_ValueError)) return KW_ERROR;
		api.PyErr_Clear();
		return KW_FALLBACK;
	}
	rc = api.PyBytes_AsStringAndSize(b, &p, &n) < 0 ? KW_ERROR : kw_put(o, p, (size_t)n);
	api.Py_DecRef(b);
	return rc;
}

// kw_dtype returns the array dtype (pymarshal.Array) of a buffer format
// character with item size size, or NULL.
static const char *kw_dtype(char c, Py_ssize_t size) {
	static const char *const sgn[9] = {NULL, "|i1", "<i2", NULL, "<i4", NULL, NULL, NULL, "<i8"};
	static const char *const uns[9] = {NULL, "|u1", "<u2", NULL, "<u4", NULL, NULL, NULL, "<u8"};
	switch (c) {
	case 'd':
		return size == 8 ? "<f8" : NULL;
	case 'f':
		return size == 4 ? "<f4" : NULL;
	case '?':
		return size == 1 ? "|b1" : NULL;
	case 'b': case 'h': case 'i': case 'l': case 'q': case 'n':
		return size > 0 && size <= 8 ? sgn[size] : NULL;
	case 'B': case 'H': case 'I': case 'L': case 'Q': case 'N':
		return size > 0 && size <= 8 ? uns[size] : NULL;
	}
	return NULL;
}

// kw_data writes the data of the export *view (o's next view slot): out
// of band when large (a marker naming it, the export kept until Go
// returns), else inline as bytes (the export released).
static int kw_data(kw_out *o, spk_Py_buffer *view, int marker) {
	if (view->len < SPK_HOST_BUF_MIN) {
		int rc = kw_code_len(o, 's', view->len);
		if (rc == KW_OK) rc = kw_put(o, view->buf, (size_t)view->len);
		api.PyBuffer_Release(view);
		return rc;
	}
	unsigned char idx[5] = {'i', (unsigned char)o->nviews, (unsigned char)(o->nviews >> 8),
	                        (unsigned char)(o->nviews >> 16), (unsigned char)(o->nviews >> 24)};
	int rc = marker ? kw_marker(o, "buf", 3) : KW_OK;
	if (rc == KW_OK) rc = kw_put(o, idx, 5);
	if (rc != KW_OK) {
		api.PyBuffer_Release(view);
		return rc;
	}
	o->bufs[o->nviews].ptr = view->buf;
	o->bufs[o->nviews].len = view->len;
	o->nviews++;
	return KW_OK;
}

// kw_buffer writes a value with the buffer protocol as _wire does for
// results: bytes when it holds bytes (format B or c, at most one
// dimension), an array marker when it holds numbers; its data out of band
// when large. KW_FALLBACK for what needs Python's conversions (a
// non-contiguous buffer, a 0-d one, another format).
static int kw_buffer(kw_out *o, PyObject *v) {
	spk_Py_buffer *view;
	const char *f, *dtype;
	int rc;
	if (o->nviews == o->vcap) {
		int cap = o->vcap * 2, i;
		spk_Py_buffer **nv = malloc(cap * sizeof *nv);
		spk_buf *nb = malloc(cap * sizeof *nb);
		if (nv == NULL || nb == NULL) {
			free(nv);
			free(nb);
			api.PyErr_NoMemory();
			return KW_ERROR;
		}
		memcpy(nv, o->views, o->vcap * sizeof *nv);
		memcpy(nb, o->bufs, o->nviews * sizeof *nb);
		for (i = o->vcap; i < cap; i++) {
			if ((nv[i] = malloc(sizeof **nv)) == NULL) break;
		}
		if (i < cap) {
			while (i-- > o->vcap) free(nv[i]);
			free(nv);
			free(nb);
			api.PyErr_NoMemory();
			return KW_ERROR;
		}
		if (o->views != o->views_ptrs) free(o->views);
		if (o->bufs != o->bufs_small) free(o->bufs);
		o->views = nv;
		o->bufs = nb;
		o->vcap = cap;
	}
	view = o->views[o->nviews];
	// 0x3c: PyBUF_C_CONTIGUOUS | PyBUF_FORMAT.
	if (api.PyObject_GetBuffer(v, view, 0x3c) < 0) {
		api.PyErr_Clear();
		return kw_splice(o, v);
	}
	f = view->format != NULL ? view->format : "B";
	if (*f == '@' || *f == '=' || *f == '<') f++; // little-endian hosts only
	if (f[0] == 0 || f[1] != 0) goto fallback;
	if ((f[0] == 'B' || f[0] == 'c') && view->ndim <= 1) return kw_data(o, view, 1);
	dtype = kw_dtype(f[0], view->itemsize);
	if (dtype == NULL || view->ndim < 1 || view->ndim > 64 || view->shape == NULL) goto fallback;
	for (int i = 0; i < view->ndim; i++) {
		if (view->shape[i] < 0 || view->shape[i] > 0x7fffffff) goto fallback;
	}
	rc = kw_marker(o, "array", 5);
	if (rc == KW_OK) rc = kw_short(o, dtype, 3);
	if (rc == KW_OK) {
		unsigned char h[2] = {')', (unsigned char)view->ndim};
		rc = kw_put(o, h, 2);
	}
	for (int i = 0; rc == KW_OK && i < view->ndim; i++) {
		Py_ssize_t d = view->shape[i];
		unsigned char b[5] = {'i', (unsigned char)d, (unsigned char)(d >> 8), (unsigned char)(d >> 16), (unsigned char)(d >> 24)};
		rc = kw_put(o, b, 5);
	}
	if (rc != KW_OK) {
		api.PyBuffer_Release(view);
		return rc;
	}
	return kw_data(o, view, 0);
fallback:
	api.PyBuffer_Release(view);
	return KW_FALLBACK;
}

static int kw_value(kw_out *o, PyObject *v);

// kw_seq writes a list or tuple.
static int kw_seq(kw_out *o, PyObject *v, int list) {
	Py_ssize_t n = list ? api.PyList_Size(v) : api.PyTuple_Size(v);
	int rc = kw_code_len(o, list ? '[' : '(', n);
	for (Py_ssize_t i = 0; rc == KW_OK && i < n; i++) {
		// A list may shrink while its items' exports run Python code
		// (kw_value holds a reference to an item while code may run).
		PyObject *x = list ? api.PyList_GetItem(v, i) : api.PyTuple_GetItem(v, i);
		if (x == NULL) {
			api.PyErr_Clear();
			api.PyErr_SetString(*api.PyExc_RuntimeError, "host_call(): a list in the arguments changed size while they were read");
			return KW_ERROR;
		}
		rc = kw_value(o, x);
	}
	return rc;
}

// kw_dict writes a dict.
static int kw_dict(kw_out *o, PyObject *d) {
	Py_ssize_t pos = 0;
	PyObject *k, *v;
	int rc = kw_put(o, "{", 1);
	// k and v are borrowed: kw_value holds a reference to a value while
	// Python code may run (an export may change the dict); k is done with
	// before v is read.
	while (rc == KW_OK && api.PyDict_Next(d, &pos, &k, &v)) {
		rc = kw_value(o, k);
		if (rc == KW_OK) rc = kw_value(o, v);
	}
	return rc != KW_OK ? rc : kw_put(o, "0", 1);
}

// kw_value writes v as marshal version 2 does, except for bytes-like
// values (see kw_buffer). The common types are written here; anything
// else by marshal itself (kw_splice). v may be a borrowed reference: the
// scalars run no Python code, and v is held while anything else is
// written.
static int kw_value(kw_out *o, PyObject *v) {
	PyObject *t;
	int rc;
	if (v == api.None) return kw_put(o, "N", 1);
	if (v == api.True) return kw_put(o, "T", 1);
	if (v == api.False) return kw_put(o, "F", 1);
	t = api.PyObject_Type(v);
	api.Py_DecRef(t); // a type outlives its instance
	if (t == api.PyUnicode_Type) {
		Py_ssize_t n;
		const char *s = api.PyUnicode_AsUTF8AndSize(v, &n);
		if (s == NULL) { // a lone surrogate: marshal's own rules apply
			api.PyErr_Clear();
			return kw_splice(o, v);
		}
		if ((rc = kw_code_len(o, 'u', n)) != KW_OK) return rc;
		return kw_put(o, s, (size_t)n);
	}
	if (t == api.PyLong_Type) {
		int overflow = 0;
		long x = api.PyLong_AsLongAndOverflow(v, &overflow);
		unsigned char b[5];
		if (overflow != 0 || x < -0x7fffffffL - 1 || x > 0x7fffffffL) return kw_splice(o, v);
		b[0] = 'i';
		b[1] = (unsigned char)x;
		b[2] = (unsigned char)(x >> 8);
		b[3] = (unsigned char)(x >> 16);
		b[4] = (unsigned char)(x >> 24);
		return kw_put(o, b, 5);
	}
	if (t == api.PyFloat_Type) {
		double d = api.PyFloat_AsDouble(v);
		unsigned char b[9];
		uint64_t bits;
		memcpy(&bits, &d, 8);
		b[0] = 'g';
		for (int i = 0; i < 8; i++) b[1 + i] = (unsigned char)(bits >> (8 * i));
		return kw_put(o, b, 9);
	}
	if (t == api.PyBytes_Type) {
		char *s;
		Py_ssize_t n;
		if (api.PyBytes_AsStringAndSize(v, &s, &n) < 0) return KW_ERROR;
		if (n >= SPK_HOST_BUF_MIN) return kw_buffer(o, v);
		if ((rc = kw_code_len(o, 's', n)) != KW_OK) return rc;
		return kw_put(o, s, (size_t)n);
	}
	api.Py_IncRef(v);
	if (o->depth >= KW_MAX_DEPTH) {
		rc = kw_splice(o, v); // marshal's own limit applies
	} else {
		o->depth++;
		if (t == api.PyDict_Type) {
			rc = kw_dict(o, v);
		} else if (t == api.PyList_Type || t == api.PyTuple_Type) {
			rc = kw_seq(o, v, t == api.PyList_Type);
		} else if (api.PyObject_CheckBuffer(v)) {
			rc = kw_buffer(o, v);
		} else {
			rc = kw_splice(o, v);
		}
		o->depth--;
	}
	api.Py_DecRef(v);
	return rc;
}

// host_call_impl is the builtin host_call(token, name, payload[, raise_[,
// resolve_]]): it hands the call to Go (spkHostCall) with the GIL
// released, on this thread. self is the int naming the interpreter's Go
// side.
//
// With three arguments payload is bytes-like (the marshalled kwargs) and
// the result is Go's reply as bytes. With four or five, payload may also
// be the kwargs dict itself, which is marshalled here (NotImplemented is
// returned when marshal refuses one of its values, for the caller to
// convert them), and the reply is decoded here: the result's value, or,
// for an error reply, what raise_(reply_bytes) returns (it raises).
//
// From the dict, bytes-like values of SPK_HOST_BUF_MIN bytes or more are
// not copied: Go gets their memory (the exports held until it returns,
// so a bytearray cannot be resized meanwhile), which markers in the
// payload name. With resolve_, Go may reply with large bytes out of band
// (bytes objects it fills) and the value, when it holds markers, is
// resolve_(value, buffers).
static PyObject *host_call_impl(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
	char small[4096], kw[512];
	spk_hostreply rep;
	spk_Py_buffer view = {0};
	kw_out o;
	char *pbuf;
	Py_ssize_t plen;
	const char *name;
	Py_ssize_t nlen = 0;
	unsigned long long handle, token;
	PyThreadState *ts;
	PyObject *out, *payload;
	int rc, encoded = 0;
	if (nargs < 3 || nargs > 5) {
		api.PyErr_SetString(*api.PyExc_TypeError, "host_call() takes 3 to 5 arguments: token (int), name (str), payload (bytes or dict)[, raise_[, resolve_]]");
		return NULL;
	}
	handle = api.PyLong_AsUnsignedLongLong(self);
	if (handle == (unsigned long long)-1 && api.PyErr_Occurred() != NULL) return NULL;
	token = api.PyLong_AsUnsignedLongLong(args[0]);
	if (token == (unsigned long long)-1 && api.PyErr_Occurred() != NULL) {
		api.PyErr_Clear();
		api.PyErr_SetString(*api.PyExc_TypeError, "host_call(): token must be a non-negative int (the call's)");
		return NULL;
	}
	name = api.PyUnicode_AsUTF8AndSize(args[1], &nlen);
	if (name == NULL) {
		api.PyErr_Clear();
		api.PyErr_SetString(*api.PyExc_TypeError, "host_call(): name must be a str");
		return NULL;
	}
	memset(&rep, 0, sizeof rep);
	rep.buf = small;
	rep.cap = sizeof small;
	rep.bufs_ok = nargs == 5;
	kw_init(&o, kw, sizeof kw);
	payload = args[2];
	pbuf = NULL;
	plen = -1;
	if (nargs >= 4) {
		PyObject *t = api.PyObject_Type(payload);
		api.Py_DecRef(t);
		if (t == api.PyDict_Type) {
			rc = kw_dict(&o, payload);
			if (rc != KW_OK) {
				kw_free(&o);
				if (rc == KW_ERROR) return NULL;
				api.Py_IncRef(api.NotImplemented);
				return api.NotImplemented;
			}
			encoded = 1;
			pbuf = o.base;
			plen = o.p - o.base;
		}
	}
	if (pbuf == NULL) {
		// A bytes-like payload (bytes, bytearray, memoryview): the export
		// keeps it alive and unresized while Go reads it.
		if (api.PyObject_GetBuffer(payload, &view, SPK_PyBUF_SIMPLE) < 0) {
			api.PyErr_Clear();
			api.PyErr_SetString(*api.PyExc_TypeError, nargs >= 4 ? "host_call(): payload must be bytes or a dict" : "host_call(): payload must be bytes");
			return NULL;
		}
		pbuf = (char *)view.buf;
		plen = view.len;
	}
	// Go runs on this thread, with the GIL released so that the
	// interpreter's other threads run meanwhile (and call Go too).
	rep.args = o.views;
	rep.nargs = o.nviews;
	ts = api.PyEval_SaveThread();
	rep.ts = ts;
	rc = spkHostCall((uintptr_t)handle, (uint64_t)token, (char *)name, nlen, pbuf, plen, o.bufs, o.nviews, &rep);
	api.PyEval_RestoreThread(ts);
	if (encoded) {
		kw_free(&o);
	} else {
		api.PyBuffer_Release(&view);
	}
	if (rc != 0) {
		// rep.out holds a NUL-terminated message.
		api.PyErr_SetString(*api.PyExc_RuntimeError, rep.out != NULL ? rep.out : "host call failed");
		out = NULL;
	} else if (nargs == 3) {
		out = api.PyBytes_FromStringAndSize(rep.out != NULL ? rep.out : "", rep.len);
	} else if (rep.len > 0 && rep.out[0] == 0x01) { // host.ReplyError
		PyObject *b = api.PyBytes_FromStringAndSize(rep.out, rep.len);
		out = b == NULL ? NULL : api.PyObject_CallFunctionObjArgs(args[3], b, NULL);
		if (b) api.Py_DecRef(b);
	} else if (rep.len == 0) {
		api.PyErr_SetString(*api.PyExc_RuntimeError, "host_call(): empty reply");
		out = NULL;
	} else {
		out = api.PyMarshal_ReadObjectFromString(rep.out, rep.len);
		if (out != NULL && nargs == 5 && (rep.markers || rep.nobjs > 0)) {
			PyObject *bt = api.PyTuple_New(rep.nobjs), *res = NULL;
			if (bt != NULL) {
				for (int i = 0; i < rep.nobjs; i++) {
					api.PyTuple_SetItem(bt, i, rep.objs[i]); // steals it
					rep.objs[i] = NULL;
				}
				res = api.PyObject_CallFunctionObjArgs(args[4], out, bt, NULL);
				api.Py_DecRef(bt);
			}
			api.Py_DecRef(out);
			out = res;
		}
	}
	if (rep.heap) free(rep.out);
	if (rep.objs != NULL) {
		for (int i = 0; i < rep.nobjs; i++) {
			if (rep.objs[i] != NULL) api.Py_DecRef(rep.objs[i]);
		}
		free(rep.objs);
	}
	return out;
}

// same_bytes returns the bytes object whose whole memory argument export
// view is, or NULL.
static PyObject *same_bytes(spk_Py_buffer *view, Py_ssize_t len) {
	char *p;
	Py_ssize_t n;
	PyObject *t;
	if (view->obj == NULL || view->len != len) return NULL;
	t = api.PyObject_Type(view->obj);
	api.Py_DecRef(t);
	if (t != api.PyBytes_Type || api.PyBytes_AsStringAndSize(view->obj, &p, &n) < 0) return NULL;
	return p == view->buf && n == len ? view->obj : NULL;
}

char **spk_host_result_bufs(spk_hostreply *rep, const Py_ssize_t *lens, const int *same, int n) {
	PyObject **objs = calloc((size_t)n, sizeof(PyObject *) + sizeof(char *));
	spk_Py_buffer **args = rep->args;
	char **ptrs;
	int i;
	if (objs == NULL || rep->objs != NULL) {
		free(objs);
		return NULL;
	}
	ptrs = (char **)(objs + n);
	api.PyEval_RestoreThread(rep->ts);
	for (i = 0; i < n; i++) {
		PyObject *b = same[i] >= 0 && same[i] < rep->nargs ? same_bytes(args[same[i]], lens[i]) : NULL;
		if (b != NULL) { // an argument echoed: immutable, so the reply may be it
			api.Py_IncRef(b);
			objs[i] = b;
			ptrs[i] = NULL;
			continue;
		}
		if ((objs[i] = api.PyBytes_FromStringAndSize(NULL, lens[i])) == NULL) break;
		ptrs[i] = api.PyBytes_AsString(objs[i]);
	}
	if (i < n) {
		api.PyErr_Clear();
		while (i-- > 0) api.Py_DecRef(objs[i]);
	}
	api.PyEval_SaveThread();
	if (i < n) {
		free(objs);
		return NULL;
	}
	rep->objs = objs;
	rep->nobjs = n;
	return ptrs;
}

// hold_interrupt_impl is the builtin hold_interrupt(): the call running
// in this thread takes no interrupt from now on (spk_interrupt reports it
// landed without raising it), and one set but not yet raised is dropped.
// It returns whether this thread runs a call. Called when the handler has
// seen its cancellation: it stops by itself, and an exception raised into
// its clean-up would cut that short. Under the GIL, as spk_interrupt runs.
static PyObject *hold_interrupt_impl(PyObject *self, PyObject *unused) {
	(void)self;
	(void)unused;
	PyThreadState *ts = api.PyThreadState_Get();
	PyObject *res = api.False;
	for (spk_tsent *e = tls_ents; e; e = e->next_in_thread) {
		if (e->ts != ts) continue;
		if (e->seq != 0) {
			spk_interp *in = e->owner;
			pthread_mutex_lock(&in->mu);
			e->held = 1;
			if (e->interrupted) {
				api.PyThreadState_SetAsyncExc(e->ident, NULL);
				e->interrupted = 0;
			}
			pthread_mutex_unlock(&in->mu);
			res = api.True;
		}
		break;
	}
	api.Py_IncRef(res);
	return res;
}

#define SPK_METH_NOARGS 0x0004

static spk_PyMethodDef hold_interrupt_def = {
	"hold_interrupt", (void *)hold_interrupt_impl, SPK_METH_NOARGS,
	"hold_interrupt(): the call running in this thread takes no interrupt from now on; True when this thread runs a call.",
};

static spk_PyMethodDef host_call_def = {
	"host_call", (void *)host_call_impl, SPK_METH_FASTCALL,
	"host_call(token, name, payload[, raise_[, resolve_]]): call the Go host function name for the call token names.\n"
	"With three arguments payload is the marshalled kwargs and Go's reply comes back as bytes; with\n"
	"raise_ payload may be the kwargs dict, and the reply comes back decoded (raise_(reply) for an error);\n"
	"with resolve_ as well, a value holding markers comes back as resolve_(value, buffers).",
};

int spk_install_host(PyThreadState *ts, const char *module, uintptr_t handle, spk_result *r) {
	PyObject *mod = NULL, *h = NULL, *fn = NULL;
	int ok = 0;
	reset(r);
	api.PyEval_RestoreThread(ts);
	mod = api.PyImport_ImportModule(module);
	if (mod == NULL) goto out;
	h = api.PyLong_FromUnsignedLongLong(handle);
	if (h == NULL) goto out;
	fn = api.PyCFunction_NewEx(&host_call_def, h, NULL);
	if (fn == NULL) goto out;
	if (api.PyObject_SetAttrString(mod, "host_call", fn) < 0) goto out;
	api.Py_DecRef(fn);
	fn = api.PyCFunction_NewEx(&hold_interrupt_def, NULL, NULL);
	if (fn == NULL) goto out;
	if (api.PyObject_SetAttrString(mod, "hold_interrupt", fn) < 0) goto out;
	ok = 1;
out:
	if (!ok) fetch_error(r);
	if (fn) api.Py_DecRef(fn);
	if (h) api.Py_DecRef(h);
	if (mod) api.Py_DecRef(mod);
	leave();
	return ok ? 0 : -1;
}

PyObject *spk_intern(PyThreadState *ts, const char *s, spk_result *r) {
	PyObject *o;
	reset(r);
	api.PyEval_RestoreThread(ts);
	o = api.PyUnicode_InternFromString(s);
	if (o == NULL) fetch_error(r);
	leave();
	return o;
}
