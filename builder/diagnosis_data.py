"""What to install when a build misses something: curated tables for builder/classify.py.

Kept apart from the matching code so that adding a library is a one-line change. Each
system entry is (Debian/Ubuntu package, CentOS/AlmaLinux package): the names a maintainer
types into apt-get or yum/dnf, the latter being what manylinux images are built on. Only
names we are sure of belong here; a header or library not listed is reported by name with
no suggestion, which beats a wrong one.
"""

from __future__ import annotations

from typing import Final

Packages = tuple[str, str]

_FFI: Final = ("libffi-dev", "libffi-devel")
_ZLIB: Final = ("zlib1g-dev", "zlib-devel")
_SSL: Final = ("libssl-dev", "openssl-devel")
_XML2: Final = ("libxml2-dev", "libxml2-devel")
_XSLT: Final = ("libxslt1-dev", "libxslt-devel")
_YAML: Final = ("libyaml-dev", "libyaml-devel")
_LZO: Final = ("liblzo2-dev", "lzo-devel")
_JPEG: Final = ("libjpeg-dev", "libjpeg-turbo-devel")
_PNG: Final = ("libpng-dev", "libpng-devel")
_TIFF: Final = ("libtiff-dev", "libtiff-devel")
_FREETYPE: Final = ("libfreetype-dev", "freetype-devel")
_SQLITE: Final = ("libsqlite3-dev", "sqlite-devel")
_BZ2: Final = ("libbz2-dev", "bzip2-devel")
_LZMA: Final = ("liblzma-dev", "xz-devel")
_READLINE: Final = ("libreadline-dev", "readline-devel")
_NCURSES: Final = ("libncurses-dev", "ncurses-devel")
_GMP: Final = ("libgmp-dev", "gmp-devel")
_MPFR: Final = ("libmpfr-dev", "mpfr-devel")
_MPC: Final = ("libmpc-dev", "libmpc-devel")
_PCRE: Final = ("libpcre3-dev", "pcre-devel")
_PCRE2: Final = ("libpcre2-dev", "pcre2-devel")
_PQ: Final = ("libpq-dev", "postgresql-devel")
_MYSQL: Final = ("default-libmysqlclient-dev", "mysql-devel")
_KRB5: Final = ("libkrb5-dev", "krb5-devel")
_SASL: Final = ("libsasl2-dev", "cyrus-sasl-devel")
_LDAP: Final = ("libldap2-dev", "openldap-devel")
_EXPAT: Final = ("libexpat1-dev", "expat-devel")
_UUID: Final = ("uuid-dev", "libuuid-devel")
_OPENBLAS: Final = ("libopenblas-dev", "openblas-devel")
_BLAS: Final = ("libblas-dev", "blas-devel")
_LAPACK: Final = ("liblapack-dev", "lapack-devel")
_LAPACKE: Final = ("liblapacke-dev", "lapack-devel")
_HDF5: Final = ("libhdf5-dev", "hdf5-devel")
_NETCDF: Final = ("libnetcdf-dev", "netcdf-devel")
_CAIRO: Final = ("libcairo2-dev", "cairo-devel")
_GLIB: Final = ("libglib2.0-dev", "glib2-devel")
_GIR: Final = ("libgirepository1.0-dev", "gobject-introspection-devel")
_DBUS: Final = ("libdbus-1-dev", "dbus-devel")
_SYSTEMD: Final = ("libsystemd-dev", "systemd-devel")
_UDEV: Final = ("libudev-dev", "systemd-devel")
_ATTR: Final = ("libattr1-dev", "libattr-devel")
_ACL: Final = ("libacl1-dev", "libacl-devel")
_CAP: Final = ("libcap-dev", "libcap-devel")
_PORTAUDIO: Final = ("portaudio19-dev", "portaudio-devel")
_SNAPPY: Final = ("libsnappy-dev", "snappy-devel")
_LZ4: Final = ("liblz4-dev", "lz4-devel")
_ZSTD: Final = ("libzstd-dev", "libzstd-devel")
_GDAL: Final = ("libgdal-dev", "gdal-devel")
_GEOS: Final = ("libgeos-dev", "geos-devel")
_PROJ: Final = ("libproj-dev", "proj-devel")
_PYTHON: Final = ("python3-dev", "python3-devel")
_CURL: Final = ("libcurl4-openssl-dev", "libcurl-devel")
_X11: Final = ("libx11-dev", "libX11-devel")
_GL: Final = ("libgl-dev", "mesa-libGL-devel")
_ALSA: Final = ("libasound2-dev", "alsa-lib-devel")
_PULSE: Final = ("libpulse-dev", "pulseaudio-libs-devel")
_SNDFILE: Final = ("libsndfile1-dev", "libsndfile-devel")
_FFTW: Final = ("libfftw3-dev", "fftw-devel")
_GSL: Final = ("libgsl-dev", "gsl-devel")
_BOOST: Final = ("libboost-all-dev", "boost-devel")
_EIGEN: Final = ("libeigen3-dev", "eigen3-devel")
_USB1: Final = ("libusb-1.0-0-dev", "libusbx-devel")
_PCAP: Final = ("libpcap-dev", "libpcap-devel")
_MAGIC: Final = ("libmagic-dev", "file-devel")
_ARCHIVE: Final = ("libarchive-dev", "libarchive-devel")
_EVENT: Final = ("libevent-dev", "libevent-devel")
_EV: Final = ("libev-dev", "libev-devel")
_UV: Final = ("libuv1-dev", "libuv-devel")
_SODIUM: Final = ("libsodium-dev", "libsodium-devel")
_GNUTLS: Final = ("libgnutls28-dev", "gnutls-devel")
_SSH2: Final = ("libssh2-1-dev", "libssh2-devel")
_SSH: Final = ("libssh-dev", "libssh-devel")
_GIT2: Final = ("libgit2-dev", "libgit2-devel")
_WEBP: Final = ("libwebp-dev", "libwebp-devel")
_OPENJPEG: Final = ("libopenjp2-7-dev", "openjpeg2-devel")
_LCMS2: Final = ("liblcms2-dev", "lcms2-devel")
_HARFBUZZ: Final = ("libharfbuzz-dev", "harfbuzz-devel")
_FRIBIDI: Final = ("libfribidi-dev", "fribidi-devel")
_RAQM: Final = ("libraqm-dev", "libraqm-devel")
_IMAGEQUANT: Final = ("libimagequant-dev", "libimagequant-devel")
_XCB: Final = ("libxcb1-dev", "libxcb-devel")
_AVIF: Final = ("libavif-dev", "libavif-devel")
_DEFLATE: Final = ("libdeflate-dev", "libdeflate-devel")
_TCL: Final = ("tcl-dev", "tcl-devel")
_TK: Final = ("tk-dev", "tk-devel")
_GDBM: Final = ("libgdbm-dev", "gdbm-devel")
_BDB: Final = ("libdb-dev", "libdb-devel")
_PAM: Final = ("libpam0g-dev", "pam-devel")
_SELINUX: Final = ("libselinux1-dev", "libselinux-devel")
_ODBC: Final = ("unixodbc-dev", "unixODBC-devel")
_ZMQ: Final = ("libzmq3-dev", "zeromq-devel")
_PROTOBUF: Final = ("libprotobuf-dev", "protobuf-devel")
_GRAPHVIZ: Final = ("libgraphviz-dev", "graphviz-devel")
_XMLSEC: Final = ("libxmlsec1-dev", "xmlsec1-devel")
_CUPS: Final = ("libcups2-dev", "cups-devel")
_FUSE: Final = ("libfuse-dev", "fuse-devel")
_FUSE3: Final = ("libfuse3-dev", "fuse3-devel")
_LLVM: Final = ("llvm-dev", "llvm-devel")
_GFORTRAN: Final = ("gfortran", "gcc-gfortran")
_GPGME: Final = ("libgpgme-dev", "gpgme-devel")
_MEMCACHED: Final = ("libmemcached-dev", "libmemcached-devel")
_RDKAFKA: Final = ("librdkafka-dev", "librdkafka-devel")
_SECP256K1: Final = ("libsecp256k1-dev", "libsecp256k1-devel")
_LEVELDB: Final = ("libleveldb-dev", "leveldb-devel")

# Header path as written in the #include -> packages.
HEADERS: Final[dict[str, Packages]] = {
    "ffi.h": _FFI,
    "ffitarget.h": _FFI,
    "zlib.h": _ZLIB,
    "zconf.h": _ZLIB,
    "yaml.h": _YAML,
    "jpeglib.h": _JPEG,
    "jconfig.h": _JPEG,
    "jerror.h": _JPEG,
    "turbojpeg.h": ("libturbojpeg0-dev", "turbojpeg-devel"),
    "png.h": _PNG,
    "tiff.h": _TIFF,
    "tiffio.h": _TIFF,
    "ft2build.h": _FREETYPE,
    "sqlite3.h": _SQLITE,
    "bzlib.h": _BZ2,
    "lzma.h": _LZMA,
    "ncurses.h": _NCURSES,
    "curses.h": _NCURSES,
    "term.h": _NCURSES,
    "panel.h": _NCURSES,
    "gmp.h": _GMP,
    "gmpxx.h": _GMP,
    "mpfr.h": _MPFR,
    "mpc.h": _MPC,
    "pcre.h": _PCRE,
    "pcre2.h": _PCRE2,
    "libpq-fe.h": _PQ,
    "pg_config.h": _PQ,
    "mysql.h": _MYSQL,
    "krb5.h": _KRB5,
    "gssapi.h": _KRB5,
    "ldap.h": _LDAP,
    "lber.h": _LDAP,
    "expat.h": _EXPAT,
    "cblas.h": _OPENBLAS,
    "f77blas.h": _OPENBLAS,
    "lapacke.h": _LAPACKE,
    "hdf5.h": _HDF5,
    "H5Cpp.h": _HDF5,
    "netcdf.h": _NETCDF,
    "cairo.h": _CAIRO,
    "glib.h": _GLIB,
    "glib-object.h": _GLIB,
    "girepository.h": _GIR,
    "libudev.h": _UDEV,
    "portaudio.h": _PORTAUDIO,
    "snappy-c.h": _SNAPPY,
    "snappy.h": _SNAPPY,
    "lz4.h": _LZ4,
    "lz4frame.h": _LZ4,
    "lz4hc.h": _LZ4,
    "zstd.h": _ZSTD,
    "zdict.h": _ZSTD,
    "gdal.h": _GDAL,
    "gdal_priv.h": _GDAL,
    "cpl_conv.h": _GDAL,
    "ogr_api.h": _GDAL,
    "geos_c.h": _GEOS,
    "proj.h": _PROJ,
    "proj_api.h": _PROJ,
    "Python.h": _PYTHON,
    "pyconfig.h": _PYTHON,
    "fftw3.h": _FFTW,
    "libusb.h": _USB1,
    "pcap.h": _PCAP,
    "magic.h": _MAGIC,
    "archive.h": _ARCHIVE,
    "archive_entry.h": _ARCHIVE,
    "ev.h": _EV,
    "uv.h": _UV,
    "sodium.h": _SODIUM,
    "libssh2.h": _SSH2,
    "git2.h": _GIT2,
    "lcms2.h": _LCMS2,
    "hb.h": _HARFBUZZ,
    "raqm.h": _RAQM,
    "libimagequant.h": _IMAGEQUANT,
    "libdeflate.h": _DEFLATE,
    "tcl.h": _TCL,
    "tk.h": _TK,
    "gdbm.h": _GDBM,
    "db.h": _BDB,
    "sql.h": _ODBC,
    "sqlext.h": _ODBC,
    "zmq.h": _ZMQ,
    "fuse.h": _FUSE,
    "secp256k1.h": _SECP256K1,
    "gpgme.h": _GPGME,
    "sndfile.h": _SNDFILE,
    "sys/acl.h": _ACL,
    "sys/capability.h": _CAP,
}

# First directory of an #include path -> packages, for families like <openssl/ssl.h>.
HEADER_DIRS: Final[dict[str, Packages]] = {
    "openssl": _SSL,
    "lzo": _LZO,
    "libxml": _XML2,
    "libxml2": _XML2,
    "libxslt": _XSLT,
    "libexslt": _XSLT,
    "freetype": _FREETYPE,
    "freetype2": _FREETYPE,
    "readline": _READLINE,
    "editline": ("libedit-dev", "libedit-devel"),
    "ncurses": _NCURSES,
    "ncursesw": _NCURSES,
    "postgresql": _PQ,
    "mysql": _MYSQL,
    "mariadb": ("libmariadb-dev", "mariadb-devel"),
    "krb5": _KRB5,
    "gssapi": _KRB5,
    "sasl": _SASL,
    "uuid": _UUID,
    "openblas": _OPENBLAS,
    "lapacke": _LAPACKE,
    "hdf5": _HDF5,
    "cairo": _CAIRO,
    "glib-2.0": _GLIB,
    "gobject-introspection-1.0": _GIR,
    "dbus": _DBUS,
    "dbus-1.0": _DBUS,
    "systemd": _SYSTEMD,
    "attr": _ATTR,
    "acl": _ACL,
    "gdal": _GDAL,
    "proj": _PROJ,
    "curl": _CURL,
    "X11": _X11,
    "GL": _GL,
    "alsa": _ALSA,
    "pulse": _PULSE,
    "gsl": _GSL,
    "boost": _BOOST,
    "Eigen": _EIGEN,
    "eigen3": _EIGEN,
    "libusb-1.0": _USB1,
    "pcap": _PCAP,
    "event2": _EVENT,
    "gnutls": _GNUTLS,
    "nettle": ("nettle-dev", "nettle-devel"),
    "libssh": _SSH,
    "webp": _WEBP,
    "openjpeg-2.5": _OPENJPEG,
    "openjpeg-2.4": _OPENJPEG,
    "openjpeg-2.3": _OPENJPEG,
    "harfbuzz": _HARFBUZZ,
    "fribidi": _FRIBIDI,
    "xcb": _XCB,
    "avif": _AVIF,
    "security": _PAM,
    "selinux": _SELINUX,
    "libmemcached": _MEMCACHED,
    "librdkafka": _RDKAFKA,
    "google": _PROTOBUF,
    "graphviz": _GRAPHVIZ,
    "xmlsec": _XMLSEC,
    "cups": _CUPS,
    "fuse3": _FUSE3,
    "llvm": _LLVM,
    "llvm-c": _LLVM,
    "leveldb": _LEVELDB,
    "python3.11": _PYTHON,
    "python3.12": _PYTHON,
    "python3.13": _PYTHON,
    "python3.14": _PYTHON,
}

# Headers that come from a Python package, not the system: the sdist forgot a build dep.
PYTHON_HEADER_DIRS: Final[dict[str, str]] = {
    "numpy": "numpy",
    "pybind11": "pybind11",
    "nanobind": "nanobind",
    "cysignals": "cysignals",
    "pythran": "pythran",
}

# Linker library name (the foo of -lfoo) -> packages.
LIBRARIES: Final[dict[str, Packages]] = {
    "ffi": _FFI,
    "lzo2": _LZO,
    "z": _ZLIB,
    "ssl": _SSL,
    "crypto": _SSL,
    "xml2": _XML2,
    "xslt": _XSLT,
    "exslt": _XSLT,
    "yaml": _YAML,
    "jpeg": _JPEG,
    "turbojpeg": ("libturbojpeg0-dev", "turbojpeg-devel"),
    "png": _PNG,
    "png16": _PNG,
    "tiff": _TIFF,
    "freetype": _FREETYPE,
    "sqlite3": _SQLITE,
    "bz2": _BZ2,
    "lzma": _LZMA,
    "readline": _READLINE,
    "ncurses": _NCURSES,
    "ncursesw": _NCURSES,
    "tinfo": _NCURSES,
    "gmp": _GMP,
    "gmpxx": _GMP,
    "mpfr": _MPFR,
    "mpc": _MPC,
    "pcre": _PCRE,
    "pcre2-8": _PCRE2,
    "pq": _PQ,
    "mysqlclient": _MYSQL,
    "mariadb": ("libmariadb-dev", "mariadb-devel"),
    "krb5": _KRB5,
    "gssapi_krb5": _KRB5,
    "k5crypto": _KRB5,
    "sasl2": _SASL,
    "ldap": _LDAP,
    "ldap_r": _LDAP,
    "lber": _LDAP,
    "expat": _EXPAT,
    "uuid": _UUID,
    "blas": _BLAS,
    "cblas": _OPENBLAS,
    "openblas": _OPENBLAS,
    "lapack": _LAPACK,
    "lapacke": _LAPACKE,
    "hdf5": _HDF5,
    "hdf5_hl": _HDF5,
    "hdf5_cpp": _HDF5,
    "netcdf": _NETCDF,
    "cairo": _CAIRO,
    "glib-2.0": _GLIB,
    "gobject-2.0": _GLIB,
    "girepository-1.0": _GIR,
    "dbus-1": _DBUS,
    "systemd": _SYSTEMD,
    "udev": _UDEV,
    "attr": _ATTR,
    "acl": _ACL,
    "cap": _CAP,
    "portaudio": _PORTAUDIO,
    "snappy": _SNAPPY,
    "lz4": _LZ4,
    "zstd": _ZSTD,
    "gdal": _GDAL,
    "geos_c": _GEOS,
    "geos": _GEOS,
    "proj": _PROJ,
    "gfortran": _GFORTRAN,
    "quadmath": _GFORTRAN,
    "curl": _CURL,
    "X11": _X11,
    "GL": _GL,
    "asound": _ALSA,
    "pulse": _PULSE,
    "sndfile": _SNDFILE,
    "fftw3": _FFTW,
    "fftw3f": _FFTW,
    "gsl": _GSL,
    "gslcblas": _GSL,
    "usb-1.0": _USB1,
    "pcap": _PCAP,
    "magic": _MAGIC,
    "archive": _ARCHIVE,
    "event": _EVENT,
    "ev": _EV,
    "uv": _UV,
    "sodium": _SODIUM,
    "gnutls": _GNUTLS,
    "ssh2": _SSH2,
    "ssh": _SSH,
    "git2": _GIT2,
    "webp": _WEBP,
    "openjp2": _OPENJPEG,
    "lcms2": _LCMS2,
    "harfbuzz": _HARFBUZZ,
    "fribidi": _FRIBIDI,
    "raqm": _RAQM,
    "imagequant": _IMAGEQUANT,
    "xcb": _XCB,
    "avif": _AVIF,
    "deflate": _DEFLATE,
    "gdbm": _GDBM,
    "db": _BDB,
    "pam": _PAM,
    "selinux": _SELINUX,
    "odbc": _ODBC,
    "zmq": _ZMQ,
    "protobuf": _PROTOBUF,
    "cgraph": _GRAPHVIZ,
    "gvc": _GRAPHVIZ,
    "xmlsec1": _XMLSEC,
    "cups": _CUPS,
    "fuse": _FUSE,
    "fuse3": _FUSE3,
    "gpgme": _GPGME,
    "memcached": _MEMCACHED,
    "rdkafka": _RDKAFKA,
    "secp256k1": _SECP256K1,
    "leveldb": _LEVELDB,
}

# Library families whose names carry a version or flavour (-lboost_python311, -lpython3.12).
LIBRARY_PREFIXES: Final[dict[str, Packages]] = {
    "boost_": _BOOST,
    "python3": _PYTHON,
    "tcl8": _TCL,
    "tk8": _TK,
    "LLVM": _LLVM,
}

# pkg-config module names, and the names meson and CMake's FindPkgConfig use for them.
PKGCONFIG: Final[dict[str, Packages]] = {
    "libffi": _FFI,
    "zlib": _ZLIB,
    "openssl": _SSL,
    "libssl": _SSL,
    "libcrypto": _SSL,
    "libxml-2.0": _XML2,
    "libxslt": _XSLT,
    "libexslt": _XSLT,
    "yaml-0.1": _YAML,
    "libjpeg": _JPEG,
    "libturbojpeg": ("libturbojpeg0-dev", "turbojpeg-devel"),
    "libpng": _PNG,
    "libpng16": _PNG,
    "libtiff-4": _TIFF,
    "freetype2": _FREETYPE,
    "sqlite3": _SQLITE,
    "bzip2": _BZ2,
    "liblzma": _LZMA,
    "readline": _READLINE,
    "ncurses": _NCURSES,
    "ncursesw": _NCURSES,
    "gmp": _GMP,
    "mpfr": _MPFR,
    "libpcre": _PCRE,
    "libpcre2-8": _PCRE2,
    "libpq": _PQ,
    "mysqlclient": _MYSQL,
    "libmariadb": ("libmariadb-dev", "mariadb-devel"),
    "mariadb": ("libmariadb-dev", "mariadb-devel"),
    "krb5": _KRB5,
    "krb5-gssapi": _KRB5,
    "mit-krb5-gssapi": _KRB5,
    "libsasl2": _SASL,
    "ldap": _LDAP,
    "expat": _EXPAT,
    "uuid": _UUID,
    "openblas": _OPENBLAS,
    "cblas": _OPENBLAS,
    "blas": _BLAS,
    "lapack": _LAPACK,
    "lapacke": _LAPACKE,
    "hdf5": _HDF5,
    "netcdf": _NETCDF,
    "cairo": _CAIRO,
    "glib-2.0": _GLIB,
    "gobject-2.0": _GLIB,
    "gio-2.0": _GLIB,
    "gobject-introspection-1.0": _GIR,
    "dbus-1": _DBUS,
    "libsystemd": _SYSTEMD,
    "libudev": _UDEV,
    "libacl": _ACL,
    "libcap": _CAP,
    "portaudio-2.0": _PORTAUDIO,
    "snappy": _SNAPPY,
    "liblz4": _LZ4,
    "libzstd": _ZSTD,
    "gdal": _GDAL,
    "geos": _GEOS,
    "proj": _PROJ,
    "python3": _PYTHON,
    "python3-embed": _PYTHON,
    "libcurl": _CURL,
    "x11": _X11,
    "gl": _GL,
    "alsa": _ALSA,
    "libpulse": _PULSE,
    "sndfile": _SNDFILE,
    "fftw3": _FFTW,
    "gsl": _GSL,
    "eigen3": _EIGEN,
    "libusb-1.0": _USB1,
    "libpcap": _PCAP,
    "libmagic": _MAGIC,
    "libarchive": _ARCHIVE,
    "libevent": _EVENT,
    "libuv": _UV,
    "libsodium": _SODIUM,
    "gnutls": _GNUTLS,
    "libssh2": _SSH2,
    "libssh": _SSH,
    "libgit2": _GIT2,
    "libwebp": _WEBP,
    "libopenjp2": _OPENJPEG,
    "lcms2": _LCMS2,
    "harfbuzz": _HARFBUZZ,
    "fribidi": _FRIBIDI,
    "raqm": _RAQM,
    "libimagequant": _IMAGEQUANT,
    "xcb": _XCB,
    "libavif": _AVIF,
    "libdeflate": _DEFLATE,
    "tcl": _TCL,
    "tk": _TK,
    "odbc": _ODBC,
    "libzmq": _ZMQ,
    "protobuf": _PROTOBUF,
    "libcgraph": _GRAPHVIZ,
    "libgvc": _GRAPHVIZ,
    "xmlsec1": _XMLSEC,
    "xmlsec1-openssl": _XMLSEC,
    "fuse": _FUSE,
    "fuse3": _FUSE3,
    "gpgme": _GPGME,
    "libsecp256k1": _SECP256K1,
    "libmemcached": _MEMCACHED,
    "rdkafka": _RDKAFKA,
}

# lxml's setup.py asks for both at once.
LXML_LIBRARIES: Final[Packages] = (f"{_XML2[0]} {_XSLT[0]}", f"{_XML2[1]} {_XSLT[1]}")

# Names setup scripts give a library in their own messages ("could not be found for
# jpeg2000"), where no header, -l or pkg-config name says which; lower-cased. Names
# that are also a -l, pkg-config or CMake name (zlib, jpeg, tiff, webp...) are found there.
SETUP_NAMES: Final[dict[str, Packages]] = {
    "jpeg2000": _OPENJPEG,  # Pillow's feature names
    "openjpeg": _OPENJPEG,
    "lcms": _LCMS2,
    "littlecms": _LCMS2,
    "webpmux": _WEBP,
    "libjpeg-turbo": _JPEG,
    "xz": _LZMA,
}

# CMake find_package() names, lower-cased -> packages.
CMAKE: Final[dict[str, Packages]] = {
    "zlib": _ZLIB,
    "openssl": _SSL,
    "bzip2": _BZ2,
    "liblzma": _LZMA,
    "png": _PNG,
    "jpeg": _JPEG,
    "tiff": _TIFF,
    "freetype": _FREETYPE,
    "libxml2": _XML2,
    "libxslt": _XSLT,
    "sqlite3": _SQLITE,
    "curl": _CURL,
    "expat": _EXPAT,
    "hdf5": _HDF5,
    "netcdf": _NETCDF,
    "blas": _OPENBLAS,
    "lapack": _LAPACK,
    "openblas": _OPENBLAS,
    "gsl": _GSL,
    "boost": _BOOST,
    "eigen3": _EIGEN,
    "fftw3": _FFTW,
    "gdal": _GDAL,
    "geos": _GEOS,
    "proj": _PROJ,
    "protobuf": _PROTOBUF,
    "gmp": _GMP,
    "mpfr": _MPFR,
    "libffi": _FFI,
    "ffi": _FFI,
    "python": _PYTHON,
    "python3": _PYTHON,
    "pythonlibs": _PYTHON,
    "krb5": _KRB5,
    "gssapi": _KRB5,
    "postgresql": _PQ,
    "opengl": _GL,
    "x11": _X11,
    "alsa": _ALSA,
    "libusb": _USB1,
    "pcap": _PCAP,
    "libarchive": _ARCHIVE,
    "llvm": _LLVM,
    "zstd": _ZSTD,
    "lz4": _LZ4,
    "snappy": _SNAPPY,
    "cairo": _CAIRO,
    "glib": _GLIB,
}

# CMake packages that a Python build dependency provides.
CMAKE_PYTHON: Final[dict[str, str]] = {
    "pybind11": "pybind11",
    "nanobind": "nanobind",
    "torch": "torch",
    "scikit-build-core": "scikit-build-core",
}

# "foo-config" style scripts that setup.py files run to find a library.
CONFIG_SCRIPTS: Final[dict[str, tuple[str, Packages]]] = {
    "pg_config": ("libpq", _PQ),
    "mysql_config": ("libmysqlclient", _MYSQL),
    "mariadb_config": ("libmariadb", ("libmariadb-dev", "mariadb-devel")),
    "xml2-config": ("libxml2", _XML2),
    "xslt-config": ("libxslt", _XSLT),
    "gdal-config": ("libgdal", _GDAL),
    "geos-config": ("libgeos", _GEOS),
    "curl-config": ("libcurl", _CURL),
    "krb5-config": ("libkrb5", _KRB5),
    "nc-config": ("libnetcdf", _NETCDF),
    "freetype-config": ("libfreetype", _FREETYPE),
    "gpgme-config": ("libgpgme", _GPGME),
    "llvm-config": ("LLVM", _LLVM),
    "xmlsec1-config": ("libxmlsec1", _XMLSEC),
    "net-snmp-config": ("libnetsnmp", ("libsnmp-dev", "net-snmp-devel")),
    "icu-config": ("libicu", ("libicu-dev", "libicu-devel")),
}

# Programs a build may run -> packages. Compilers are listed under the name the log uses.
TOOLS: Final[dict[str, Packages]] = {
    "gcc": ("gcc", "gcc"),
    "cc": ("gcc", "gcc"),
    "g++": ("g++", "gcc-c++"),
    "c++": ("g++", "gcc-c++"),
    "clang": ("clang", "clang"),
    "clang++": ("clang", "clang"),
    "gfortran": _GFORTRAN,
    "f77": _GFORTRAN,
    "f95": _GFORTRAN,
    "cmake": ("cmake", "cmake"),
    "ninja": ("ninja-build", "ninja-build"),
    "make": ("make", "make"),
    "meson": ("meson", "meson"),
    "pkg-config": ("pkg-config", "pkgconfig"),
    "pkgconf": ("pkgconf", "pkgconf"),
    "swig": ("swig", "swig"),
    "nasm": ("nasm", "nasm"),
    "yasm": ("yasm", "yasm"),
    "autoconf": ("autoconf", "autoconf"),
    "automake": ("automake", "automake"),
    "autoreconf": ("autoconf", "autoconf"),
    "libtool": ("libtool", "libtool"),
    "libtoolize": ("libtool", "libtool"),
    "bison": ("bison", "bison"),
    "flex": ("flex", "flex"),
    "git": ("git", "git"),
    "patch": ("patch", "patch"),
    "perl": ("perl", "perl"),
    "protoc": ("protobuf-compiler", "protobuf-compiler"),
    "go": ("golang-go", "golang"),
    "java": ("default-jdk", "java-11-openjdk-devel"),
    "javac": ("default-jdk", "java-11-openjdk-devel"),
    "node": ("nodejs", "nodejs"),
    "npm": ("npm", "npm"),
}

# Tools that are not system packages one would install from the distribution.
RUST_HINT: Final = "install a Rust toolchain (rustup, or cargo + rustc from the distribution)"
TOOL_HINTS: Final[dict[str, str]] = {
    "cargo": RUST_HINT,
    "rustc": RUST_HINT,
    "rustup": RUST_HINT,
    "maturin": "add maturin to build-system.requires",
}

# Python import names whose distribution on PyPI is spelled differently.
PYPI_NAMES: Final[dict[str, str]] = {
    "skbuild": "scikit-build",
    "scikit_build_core": "scikit-build-core",
    "setuptools_rust": "setuptools-rust",
    "setuptools_scm": "setuptools-scm",
    "mesonpy": "meson-python",
    "pkg_resources": "setuptools",
    "yaml": "PyYAML",
    "Cython": "Cython",
    "cython": "Cython",
    "google": "protobuf",
    "sipbuild": "sip",
    "pyqtbuild": "PyQt-builder",
    "hatchling": "hatchling",
    "flit_core": "flit-core",
    "poetry": "poetry-core",
    "pdm": "pdm-backend",
    "git": "GitPython",
}

# Standard-library modules later Pythons removed: importing them means the sdist predates
# the interpreter, not that a build dependency is missing.
REMOVED_STDLIB: Final[dict[str, str]] = {
    "distutils": "3.12",
    "imp": "3.12",
    "asynchat": "3.12",
    "asyncore": "3.12",
    "smtpd": "3.12",
    "cgi": "3.13",
    "cgitb": "3.13",
    "crypt": "3.13",
    "pipes": "3.13",
    "telnetlib": "3.13",
    "nntplib": "3.13",
    "imghdr": "3.13",
    "sndhdr": "3.13",
    "uu": "3.13",
    "xdrlib": "3.13",
    "audioop": "3.13",
    "chunk": "3.13",
    "mailcap": "3.13",
    "msilib": "3.13",
    "nis": "3.13",
    "ossaudiodev": "3.13",
    "spwd": "3.13",
    "sunau": "3.13",
    "aifc": "3.13",
    "lib2to3": "3.13",
}
