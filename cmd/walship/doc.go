// Command walship keeps a PostgreSQL cluster recoverable to any moment from
// object storage. This package only reads flags and environment, sets up
// logging, wires the libraries together and picks exit codes:
// 0 done, 1 failed, 2 usage or bad input.
package main
