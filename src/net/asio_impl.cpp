// The one translation unit that compiles Boost.Asio (with its TLS layer) and Boost.Beast
// (BOOST_ASIO_SEPARATE_COMPILATION / BOOST_BEAST_SEPARATE_COMPILATION): every other file
// includes their headers as declarations only, which keeps rebuilds fast on small machines.
#include <utility>
#include <boost/asio/impl/src.hpp>
#include <boost/asio/ssl/impl/src.hpp>
#include <boost/beast/src.hpp>
