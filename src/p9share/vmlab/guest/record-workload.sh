# Guest workload for recording golden 9P vectors (p9share.vmlab.recorder).
# Runs in the mounted share (cwd); each step is echoed so the log shows what caused
# which frames. The unmount happens in /init after this script.
step() { echo "## $*"; }
step create+write;  echo "hello, 9p vectors" > file.txt
step read;          cat file.txt
step mkdir;         mkdir dir
step readdir;       ls -la
step getattr;       stat -c '%n %s %a %h' file.txt
step chmod;         chmod 600 file.txt
step truncate;      truncate -s 5 file.txt
step touch;         touch -d '2020-01-02 03:04:05' file.txt
step getattr;       stat -c '%n %s %a %Y' file.txt
step symlink;       ln -s file.txt sym
step readlink;      readlink sym
step link;          ln file.txt hard
step rename;        mv hard dir/moved
step getattr;       stat -c '%n %h' file.txt dir/moved
step unlink;        rm dir/moved
step statfs;        stat -f -c '%t %b' . >/dev/null && echo statfs ok
step xattr-set;     p9xattr set file.txt user.vector value1
step xattr-get;     p9xattr get file.txt user.vector
step xattr-list;    p9xattr list file.txt
step xattr-remove;  p9xattr remove file.txt user.vector
step locks;         p9lock -t L file.txt wr 0 0 get rd 0 0 un 0 0 flock ex flock un
step cleanup;       rm sym file.txt; rmdir dir
step done;          ls -la
